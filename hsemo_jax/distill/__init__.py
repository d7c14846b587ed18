"""ABAW-2 multi-database teacher-student distillation (seed extras spec §2) on the shared trainer.

`objective` (VA bins, KD, the split rule, `DistillObjective`), `data` (streams, shared annotations,
`StreamIterator`), `model` (per-stream forward, the frozen teacher's logits, model files). The
network itself is `hsemo_jax.models.heads.DistillModel`; `hsemo-jax distill` runs it.
"""
