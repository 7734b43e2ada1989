"""Trials on this machine: a supervisor process, one keeper per run, the process table.

The supervisor (``_supervisor``) and the keepers (``_keeper``) run in
processes of their own and import only the standard library, so this
package imports nothing by itself.
"""
