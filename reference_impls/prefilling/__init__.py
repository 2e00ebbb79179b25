"""Prefilling-stage methods: visual tokens pruned inside the LLM layer loop (attention- and
diversity-guided) and block-sparse attention for long visual contexts."""
