"""Bridges from the polychromic objective to other training frameworks, one module each.

- `polychromic.integrations.trl`: `PolychromicReward`, the set-level term as a TRL GRPOTrainer
  reward function (docs/trl.md).

Nothing is imported here, so `import polychromic.integrations` stays light; import the module of
the framework you use.
"""
