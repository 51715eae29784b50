"""Hydra finds sweepers only inside the `hydra_plugins` namespace: this package registers oyster-exp's."""
