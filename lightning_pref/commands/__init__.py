"""The subcommands of ``python -m lightning_pref`` other than fit/validate/test.

Each is a module (or folder) with a ``main(argv)``; :mod:`lightning_pref.__main__` holds the table.
A command imports library code, never another command.
"""
