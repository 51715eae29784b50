"""Preference-pair policies, one module each; every module registers its class as `pairs/<name>_schema`.

Adding a policy: a module here with a `PairPolicy` subclass and its `register_component` call, plus
`conf/pairs/<name>.yaml`. `oyster_exp.run.components` imports every module of this package.
"""
