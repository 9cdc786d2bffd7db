"""The retraining core: the period loop, retrains, resume and the release lifecycle.

Nothing here imports Flower. The controller (:mod:`fedretrain.retraining.controller`) reaches
the sites only through the :class:`~fedretrain.retraining.port.Federation` port, which
:mod:`fedretrain.flower.federation` implements on a Flower grid and the unit tests implement
with numpy. See ``docs/architecture.md``. Import from the modules themselves: this package
face imports nothing, so that :mod:`fedretrain.checkpoint` can use the leaf
:mod:`~fedretrain.retraining.release_state` without loading the controller.
"""
