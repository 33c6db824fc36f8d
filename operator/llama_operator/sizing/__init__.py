"""Pure sizing: model facts, quantization, memory model, GPU classes and the fit decision."""
