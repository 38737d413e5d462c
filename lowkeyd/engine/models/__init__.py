"""Pretrained networks as ``torch.nn.Module``s, each loaded from a verified weight file."""
