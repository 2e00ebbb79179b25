"""Object-hallucination mitigation by unlearning, with the metrics and robustness probes to judge it.

Modules:

- :mod:`.hallucination_metrics`: CHAIR_s / CHAIR_i, POPE, object F1, targeted mention rate.
- :mod:`.unlearning_losses`: pure tensor losses (GA, NPO, EFUF weighting, NLL, KL).
- :mod:`.terms` and :mod:`.trainer`: the one trainer every training-based mitigation shares
  (full model or peft LoRA; optional targeted or vanilla SAM step).
- :mod:`.base`: the ``kind="unlearning"`` interface; methods :mod:`.gradient_ascent`,
  :mod:`.npo`, :mod:`.efuf`, :mod:`.sare` (family ``hallucination-unlearning``).
- :mod:`.robustness`: relearning attack, Gaussian weight noise, worst-case perturbation probe.
- :mod:`.captioner`, :mod:`.train_captioner`, :mod:`.bench`: the ToyVLM co-occurrence
  hallucination benchmark.
- Other mitigation families (``kind="hallucination"``): :mod:`.contrastive_decoding` (VCD),
  :mod:`.attention_intervention` (PAI-style), :mod:`.representation_steering`,
  :mod:`.post_hoc_correction` (decode-time or post-hoc, ``with method(model): ...`` or a
  captioner function) and :mod:`.preference_optimization` (DPO), :mod:`.grounded_tuning`
  (training through the shared trainer); :mod:`.compare` benchmarks all families.

Interface of ``kind="unlearning"`` registry entries: a dataclass subclassing
:class:`~.base.UnlearningMethod`; ``method.unlearn(model, batches)`` changes ``model`` in place,
where ``batches(step)`` returns ``{"forget": ..., "grounded": ..., "retain": ...}``, each a dict
of model inputs plus ``labels`` and ``mask`` (B, T).
"""
