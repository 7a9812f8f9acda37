"""What one browser session holds (kept in ``gr.State``, so every user has their own)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np


@dataclass
class DemoSession:
    """One user's video features and conversation.

    gradio deep-copies the initial value of a ``gr.State`` for each browser session, so two users never
    share a history; the handlers mutate this object and return it.
    """

    session_id: str = ""
    video_name: str = ""
    features: dict[str, np.ndarray] = field(default_factory=dict)
    history: list[tuple[str, str]] = field(default_factory=list)
    """Finished (question, answer) turns, oldest first, as the inference engine takes them."""

    def __post_init__(self) -> None:
        if not self.session_id:
            self.session_id = uuid.uuid4().hex[:12]

    @property
    def ready(self) -> bool:
        return bool(self.features)

    def clear(self) -> None:
        """Forget the video and the conversation."""
        self.video_name = ""
        self.features = {}
        self.history = []

    def chat_messages(self) -> list[dict[str, str]]:
        """The history in gradio's ``Chatbot`` message format."""
        messages: list[dict[str, str]] = []
        for question, answer in self.history:
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        return messages
