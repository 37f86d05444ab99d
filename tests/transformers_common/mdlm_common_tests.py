"""transformers' own common model tests (ModelTesterMixin of the installed release) run on our classes.

Not collected by the project's pytest run: `tests/transformers_common/run.sh` downloads the installed transformers
release's source distribution (its tests/ folder is not in the wheel), copies this file (as test_mdlm_common.py) next to its
test_modeling_common.py and runs it. Tests that assume a causal LM or an autoregressive generate() are skipped here
with the reason; the rest must pass.
"""

import unittest

import torch

from hf_mdlm import MDLMConfig, MDLMForMaskedLM, MDLMModel
from .test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask


class MDLMModelTester:
    def __init__(self, parent, batch_size=3, seq_length=7, is_training=True, vocab_size=99, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=37):
        self.parent = parent
        self.batch_size, self.seq_length, self.is_training = batch_size, seq_length, is_training
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads, self.intermediate_size = num_key_value_heads, intermediate_size

    def get_config(self):
        return MDLMConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                          num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                          num_key_value_heads=self.num_key_value_heads, intermediate_size=self.intermediate_size,
                          max_position_embeddings=64, mask_token_id=98, eos_token_id=97, pad_token_id=0)

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class MDLMModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MDLMModel, MDLMForMaskedLM)

    def setUp(self):
        self.model_tester = MDLMModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # What registration in MODEL_FOR_MASKED_LM_MAPPING would give: labels for the LM, none for the body.
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        if return_labels and model_class is MDLMForMaskedLM:
            inputs["labels"] = inputs["input_ids"].clone()
        return inputs

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        # The body has no loss (transformers skips MODEL_MAPPING classes the same way).
        classes = self.all_model_classes
        self.all_model_classes = (MDLMForMaskedLM,)
        try:
            super().check_training_gradient_checkpointing(gradient_checkpointing_kwargs)
        finally:
            self.all_model_classes = classes

    def test_training(self):
        classes = self.all_model_classes
        self.all_model_classes = (MDLMForMaskedLM,)
        try:
            super().test_training()
        finally:
            self.all_model_classes = classes

    @unittest.skip("GenerationTesterMixin tests autoregressive generate(); ours is a diffusion sampler")
    def test_generation_tester_mixin_inheritance(self):
        pass
