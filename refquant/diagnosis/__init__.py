"""Which tensor costs accuracy: the sensitivity of a quantization plan tensor by tensor
(:mod:`~refquant.diagnosis.sensitivity`) and its plots (:mod:`~refquant.diagnosis.plots`);
``refquant diagnose`` runs both on a model and a data split.
"""
