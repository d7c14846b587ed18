"""Training: the ABAW-7 multi-task head and multi-task backbone pretraining (one trainer).

Light on purpose: import the submodules (`head`, `losses`, `loop`, ...) you need.
"""
