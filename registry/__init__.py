"""Model registry: SQL store, content-addressed artifact store, importers, analyse-once cache, `genie-models`.

The entry point is `genie.registry.store.Registry`; see README.md in this folder.
"""
