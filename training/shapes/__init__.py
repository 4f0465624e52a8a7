"""The shapes world: a synthetic domain in the real data formats, and SynSeg's whole recipe run on it.

``python -m training.shapes generate`` writes the data; ``python -m training.shapes run`` trains the CLIP
(stage 1), the dense decoder (stage 2) and MCCL (stage 3), evaluates them and writes the results.
"""
