"""Continual industrial anomaly detection with a frozen diffusion U-Net.

Reference implementations for the ``continual-ad`` topic: HF-OLB + HNABG (orthogonal LoRA banks
with novelty-driven growth, :mod:`~reference_impls.continual_ad.hfolb`), the baselines it is
compared with (naive sequential LoRA, replay, oracle per-task LoRA, joint training, O-LoRA,
GPM-style gradient projection), the shared reconstruction scorer, the continual metrics
(AUROC, AUPRO, A-AUROC, FM), loaders for MVTec AD and VisA and the ProcAD synthetic benchmark.
Every method shares the frozen U-Net of :mod:`~reference_impls.continual_ad.diffusion`.
"""
