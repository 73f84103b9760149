"""
The `anthropic` proposer: Anthropic's Messages API through the official `anthropic` SDK.
--model, the key from ANTHROPIC_API_KEY; --base-url (else ANTHROPIC_BASE_URL) for a proxy.
"""

import os

from autoresearch.proposers import ProposerConfigError
from autoresearch.proposers.llm import ChatProposer


class AnthropicProposer(ChatProposer):
    name = "anthropic"
    default_model = "claude-sonnet-4-6"
    max_tokens = 16000  # room for a complete train.py

    def __init__(self, model=None, base_url=None, api_key=None, timeout=600, max_retries=2, **options):
        try:
            import anthropic
        except ImportError:
            raise ProposerConfigError("the anthropic proposer needs the anthropic package: "
                                      "pip install 'autoresearch[anthropic]'")
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise ProposerConfigError("ANTHROPIC_API_KEY is not set: export it to use the anthropic proposer")
        super().__init__(model=model, **options)
        self.sdk = anthropic
        self.client = anthropic.Anthropic(api_key=api_key, base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL"),
                                          timeout=timeout, max_retries=max_retries)

    def chat(self, system, messages):
        try:
            response = self.client.messages.create(model=self.model, max_tokens=self.max_tokens,
                                                   system=system, messages=messages)
        except (self.sdk.AuthenticationError, self.sdk.PermissionDeniedError,
                self.sdk.NotFoundError) as e:
            raise ProposerConfigError(f"the API refused the request (check the key and --model): {e}")
        text = "".join(block.text for block in response.content if getattr(block, "type", "") == "text")
        usage = response.usage
        prompt_tokens = sum(getattr(usage, field, 0) or 0 for field in
                            ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        return text, prompt_tokens, getattr(usage, "output_tokens", 0) or 0
