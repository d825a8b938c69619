"""The lifecycle adapters: the only code that talks to DVC and MLflow.

``lineage`` (DVC data versions, tamper checks, serialized ``dvc`` commands), ``tracking`` (MLflow
runs), ``registry`` (the three bundles, releases, aliases), ``promotion`` (the gate that moves
``champion``), ``release`` (``models:/`` URIs to local checkpoints) and ``bundle_model`` (the MLflow
models-from-code entry of every bundle). Flows, serving and the command line use them; a step
(``components/``) or the library (``src/tessera``) never does.
"""
