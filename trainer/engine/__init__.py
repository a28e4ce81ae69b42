"""Training loops: pretrain.py (SimSiam); run.py holds the plumbing every loop shares."""
