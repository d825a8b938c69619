"""Tessera's serving layer: TorchServe handlers, archives, a local server, deployment and rollback.

Kept thin on purpose (TorchServe is in limited maintenance upstream): the handlers only parse, guard
and stamp requests around the library's models, so another server could replace TorchServe.
"""
