"""Engine: tokenize -> schedule -> step -> detokenize (see jaxsgl.engine.engine.Engine)."""
