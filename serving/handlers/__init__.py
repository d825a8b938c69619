"""TorchServe handlers for Tessera's three bundles: encoder, generator, TTT classifier."""
