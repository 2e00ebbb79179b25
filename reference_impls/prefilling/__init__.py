"""Prefilling-stage methods: visual tokens pruned inside the LLM layer loop (attention- and
diversity-guided), block-sparse attention for long visual contexts, and operation skipping (every
visual token kept, some of its operations skipped in some layers)."""
