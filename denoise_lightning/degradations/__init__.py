"""Degradations: what turns a clean image into the network's input (noise models), one small class each."""
