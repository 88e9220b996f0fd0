"""Quantization-aware fine-tuning (finetune) and the recipe that carries a compile's placement into it (recipe).
"""
