"""The bundled ``demo`` model's world: the synthetic scenes it is trained and judged on
(``scenes``) and its DINO training (``training``, used by ``scripts/train_demo_model.py``)."""
