"""Class-specific explanations of the supervised presets: why the model says this class
(``vidattn.explain`` in the notebook API, the ``explain`` image probe).

- ``gradients``: one interface to the backends' automatic differentiation (TensorFlow, JAX,
  torch), which Keras 3 does not give.
- ``methods``: the relevance methods, each as its reference code computes it, from one forward
  and backward pass (``Model`` attention and its gradients); ``explain`` runs them.
- ``targets``: which class a map explains (an index, an ImageNet name, or the top class).
"""
