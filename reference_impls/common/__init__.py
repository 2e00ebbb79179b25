"""Pieces shared by every method: tiny model builders, synthetic scenes, ToyVLM, the evaluation
harness, the stage cost model and the reproduced-results format."""
