"""Request models of the HTTP API (pydantic): SGLang's native /generate and OpenAI's /v1/*.

Every model is strict (no "5" -> 5 coercion), forbids unknown fields and rejects NaN/Infinity,
so hostile input fails validation (-> 400) instead of reaching the engine. Fields that SGLang
or OpenAI define but jaxsgl does not implement are accepted only at their neutral value
(null / false / empty); anything else is a 400 naming the field.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 128  # choices per prompt
MAX_BATCH = 4096  # prompts per request
MAX_STOP = 64  # stop strings per request
MAX_TOP_LOGPROBS = 20  # top logprobs per position (each distinct count compiles a sampler variant)


class StrictModel(BaseModel):
    """Base: strict types, unknown fields rejected, no NaN/Infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # name -> neutral values; a field listed here is a known-but-unsupported option
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @model_validator(mode="after")
    def _only_neutral_unsupported(self) -> "StrictModel":
        for name, neutral in self.UNSUPPORTED.items():
            value = getattr(self, name, None)
            if value is not None and not any(value == n and type(value) is type(n) for n in neutral):
                raise ValueError(f"'{name}' is not supported by this server (got {value!r})")
        return self


# --------------------------------------------------------------------------- SGLang native
class SGLSamplingParams(StrictModel):
    """SGLang's sampling parameter names (srt/sampling/sampling_params.py); jaxsgl adds `seed`."""

    max_new_tokens: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    min_new_tokens: int | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    sampling_seed: int | None = None
    seed: int | None = None
    stop_regex: str | list[str] | None = None
    stream_interval: int | None = Field(default=None, ge=1)  # streams: an event every N tokens (server's default)
    # SGLang names without a jaxsgl implementation: neutral values only
    spaces_between_special_tokens: bool | None = None
    no_stop_trim: bool | None = None
    logit_bias: dict[str, float] | None = None
    beam_width: int | None = None
    structural_tag: str | None = None
    custom_params: dict[str, Any] | None = None
    watermark: Any = None
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "spaces_between_special_tokens": (True,), "no_stop_trim": (False,),
        "logit_bias": ({},), "beam_width": (1,), "structural_tag": (),
        "custom_params": ({},), "watermark": ()}

    @field_validator("stop")
    @classmethod
    def _stop_count(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return v


class GenerateRequest(StrictModel):
    """POST /generate (SGLang's GenerateReqInput, the fields jaxsgl serves)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    return_logprob: bool | list[bool] | None = None
    logprob_start_len: int | list[int] | None = None
    top_logprobs_num: int | list[int] | None = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: str | list[str] | None = None
    priority: int | list[int] | None = None
    log_metrics: bool = True
    # SGLang fields with no jaxsgl implementation: neutral values only
    lora_path: Any = None
    lora_id: Any = None
    image_data: Any = None
    video_data: Any = None
    audio_data: Any = None
    input_embeds: Any = None
    token_ids_logprob: Any = None
    return_hidden_states: Any = None
    return_routed_experts: Any = None
    session_params: Any = None
    custom_logit_processor: Any = None
    modalities: Any = None
    bootstrap_host: Any = None
    bootstrap_port: Any = None
    bootstrap_room: Any = None
    data_parallel_rank: Any = None
    background: Any = None
    return_bytes: Any = None
    return_entropy: Any = None
    # accepted and ignored (sglang-router sends them)
    routing_key: Any = None
    model: str | None = None
    no_logs: bool | None = None
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {k: (False, [], {}) for k in (
        "lora_path", "lora_id", "image_data", "video_data", "audio_data", "input_embeds", "token_ids_logprob",
        "return_hidden_states", "return_routed_experts", "session_params", "custom_logit_processor", "modalities",
        "bootstrap_host", "bootstrap_port", "bootstrap_room", "data_parallel_rank", "background", "return_bytes",
        "return_entropy")}

    @model_validator(mode="after")
    def _one_input(self) -> "GenerateRequest":
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of 'text' or 'input_ids'")
        if isinstance(self.text, list) and len(self.text) > MAX_BATCH or \
                isinstance(self.input_ids, list) and self.input_ids and isinstance(self.input_ids[0], list) \
                and len(self.input_ids) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} prompts per request")
        tops = self.top_logprobs_num if isinstance(self.top_logprobs_num, list) else [self.top_logprobs_num or 0]
        if any(not 0 <= t <= MAX_TOP_LOGPROBS for t in tops):
            raise ValueError(f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS}]")
        return self


class TokenizeRequest(StrictModel):
    """POST /tokenize (SGLang's shape: prompt or messages)."""

    model: str | None = None
    prompt: str | list[str] | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' or 'messages' must be provided")
        return self


class DetokenizeRequest(StrictModel):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int] | list[list[int]]
    skip_special_tokens: bool = True


class AbortRequest(StrictModel):
    """POST /abort_request."""

    rid: str = ""
    abort_all: bool = False
    abort_message: str | None = None


# --------------------------------------------------------------------------- OpenAI
class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(StrictModel):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type 'json_schema' needs json_schema.schema")
        return self


class OpenAISampling(StrictModel):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI's, plus SGLang's extras)."""

    model: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    user: str | None = None
    # SGLang extras
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    regex: str | None = None
    ebnf: str | None = None
    rid: str | None = None
    # accepted only at a neutral value
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None
    no_stop_trim: bool | None = None
    return_hidden_states: bool | None = None
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        "logit_bias": ({},), "best_of": (1,), "no_stop_trim": (False,), "return_hidden_states": (False,)}

    @field_validator("stop")
    @classmethod
    def _stop_count(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return v


class CompletionRequest(OpenAISampling):
    """POST /v1/completions."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {**OpenAISampling.UNSUPPORTED, "suffix": ("",)}

    @model_validator(mode="after")
    def _prompt_batch(self) -> "CompletionRequest":
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int) \
                and len(self.prompt) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} prompts per request")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        if self.echo and self.logprobs is not None and self.stream:
            raise ValueError("echo with logprobs is not supported when streaming")
        return self


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (content parts of type "text" joined); other part types raise ValueError."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported, got {str(part)[:80]}")
            out.append(part["text"])
        return "".join(out)


class ChatCompletionRequest(OpenAISampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    continue_final_message: bool | None = None
    separate_reasoning: bool | None = None  # SGLang's reasoning-parser switches: no parser here, ignored
    stream_reasoning: bool | None = None
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {
        **OpenAISampling.UNSUPPORTED, "tools": ([],), "tool_choice": ("none", "auto"),
        "continue_final_message": (False,)}

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self
