"""The playground's parameters, turned into the same OpenAI request body the API takes."""

from __future__ import annotations

from typing import Any

from django import forms

MAX_COMPARED = 3


def parse_stops(text: str) -> list[str]:
    r"""One stop sequence per line; `\n` and `\t` are written as escapes."""
    stops = []
    for line in text.splitlines():
        if line:
            stops.append(line.replace("\\n", "\n").replace("\\t", "\t"))
    return stops


class PlaygroundForm(forms.Form):
    MODES = [("completion", "Completion"), ("chat", "Chat")]

    mode = forms.ChoiceField(choices=MODES, initial="completion")
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False, strip=False)
    system = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    temperature = forms.FloatField(min_value=0, max_value=2, initial=0.7)
    max_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=64)
    top_p = forms.FloatField(min_value=0, max_value=1, initial=1)
    stop = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        strip=False,
        help_text=r"One per line (up to 4); write a newline as \n.",
    )
    presence_penalty = forms.FloatField(min_value=-2, max_value=2, initial=0)
    frequency_penalty = forms.FloatField(min_value=-2, max_value=2, initial=0)
    logprobs = forms.IntegerField(
        min_value=0, max_value=5, initial=3, help_text="Alternatives shown per token."
    )

    def clean_stop(self) -> list[str]:
        stops = parse_stops(self.cleaned_data.get("stop") or "")
        if len(stops) > 4:
            raise forms.ValidationError("At most 4 stop sequences.")
        return stops

    def openai_body(self, model: str, *, stream: bool) -> dict[str, Any]:
        """The /v1 request body for `model`; logprobs are always on, for the shading."""
        data = self.cleaned_data
        body: dict[str, Any] = {
            "model": model,
            "temperature": data["temperature"],
            "max_tokens": data["max_tokens"],
            "top_p": data["top_p"],
            "presence_penalty": data["presence_penalty"],
            "frequency_penalty": data["frequency_penalty"],
        }
        if data["stop"]:
            body["stop"] = data["stop"]
        if data["mode"] == "chat":
            messages = [{"role": "system", "content": data["system"]}] if data["system"] else []
            messages.append({"role": "user", "content": data["prompt"]})
            body.update(messages=messages, logprobs=True, top_logprobs=data["logprobs"])
        else:
            body.update(prompt=data["prompt"], logprobs=data["logprobs"])
        if stream:
            body["stream"] = True
        return body
