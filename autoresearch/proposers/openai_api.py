"""
The `openai` proposer: any OpenAI-compatible chat-completions endpoint (OpenAI, OpenRouter, vLLM,
Ollama) through the official `openai` SDK. --model, --base-url (else OPENAI_BASE_URL, else OpenAI),
the key from OPENAI_API_KEY (a local server given with --base-url may need none).
"""

import os

from autoresearch.proposers import ProposerConfigError
from autoresearch.proposers.llm import ChatProposer


class OpenAIProposer(ChatProposer):
    name = "openai"
    default_model = "gpt-4.1-mini"

    def __init__(self, model=None, base_url=None, api_key=None, timeout=600, max_retries=2, **options):
        try:
            import openai
        except ImportError:
            raise ProposerConfigError("the openai proposer needs the openai package: pip install 'autoresearch[openai]'")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise ProposerConfigError("OPENAI_API_KEY is not set: export it, or pass --base-url for a "
                                          "local server that needs no key")
            api_key = "none"  # local servers (vLLM, Ollama) accept any key
        super().__init__(model=model, **options)
        self.sdk = openai
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout,
                                  max_retries=max_retries)

    def chat(self, system, messages):
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "system", "content": system}, *messages])
        except (self.sdk.AuthenticationError, self.sdk.PermissionDeniedError,
                self.sdk.NotFoundError) as e:
            raise ProposerConfigError(f"the API refused the request (check the key, --model and --base-url): {e}")
        text = response.choices[0].message.content if response.choices else ""
        usage = response.usage
        return text, getattr(usage, "prompt_tokens", 0), getattr(usage, "completion_tokens", 0)
