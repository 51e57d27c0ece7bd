"""The in-model correction: what a real decoder adds to the sum of its isolated ops.

:class:`InModelCorrection` fits it to a profile's whole-decoder rows, one module per term; see
:mod:`pis.simulator.inmodel.correction` and ``docs/model.md``.
"""
