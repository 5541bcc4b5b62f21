"""Model cards, as the README shows them: what ``tritonnb.bind`` returns, and the request snippets it shows
(``curl_command``, ``python_snippet``). The code lives in ``tritonnb.ui.card``."""

from tritonnb.ui.card import ModelCard, curl_command, python_snippet

__all__ = ["ModelCard", "curl_command", "python_snippet"]
