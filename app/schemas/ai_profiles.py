from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import langcodes
from pydantic import AfterValidator, ConfigDict, Field

from app.schemas.common import RequestModel, ResponseModel


def _bcp47(value: str) -> str:
    if not langcodes.tag_is_valid(value):
        raise ValueError(f"'{value}' is not a BCP-47 language tag (e.g. en-US, fr-FR, es)")
    return langcodes.standardize_tag(value)


Language = Annotated[str, Field(min_length=2, max_length=35), AfterValidator(_bcp47)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
SystemPrompt = Annotated[str, Field(min_length=1, max_length=20_000)]
Greeting = Annotated[str, Field(max_length=1_000)]
Temperature = Annotated[float, Field(ge=0, le=2)]
MaxTokens = Annotated[int, Field(ge=1, le=4_096)]
Duration = Annotated[int, Field(ge=30, le=14_400)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
TransferNumber = Annotated[str, Field(min_length=3, max_length=40)]


class AIProfileCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Receptionist",
                    "system_prompt": "You are the friendly receptionist of Acme Dental. Book appointments.",
                    "greeting": "Hello, Acme Dental, how can I help?",
                    "is_default": True,
                }
            ]
        }
    )

    name: Name = Field(examples=["Receptionist"])
    system_prompt: SystemPrompt = Field(
        examples=["You are the friendly receptionist of Acme Dental. Book appointments."]
    )
    greeting: Greeting | None = Field(
        default=None, examples=["Hello, Acme Dental, how can I help?"]
    )
    llm_model: ShortText | None = Field(default=None, description="Overrides LLM_MODEL.")
    temperature: Temperature = 0.7
    max_tokens: MaxTokens = 300
    voice: ShortText | None = Field(default=None, description="TTS voice name for Twilio.")
    language: Language = "en-US"
    max_call_duration_seconds: Duration = 1800
    transfer_number: TransferNumber | None = Field(
        default=None, description="E.164 number the agent may transfer callers to."
    )
    is_default: bool = False


class AIProfileUpdate(RequestModel):
    """Partial update: only the fields present change; null clears an optional field."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"temperature": 0.3, "max_tokens": 200}]}
    )

    name: Name | None = None
    system_prompt: SystemPrompt | None = None
    greeting: Greeting | None = None
    llm_model: ShortText | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    voice: ShortText | None = None
    language: Language | None = None
    max_call_duration_seconds: Duration | None = None
    transfer_number: TransferNumber | None = None
    is_default: bool | None = None


REQUIRED_ON_UPDATE = (
    "name",
    "system_prompt",
    "temperature",
    "max_tokens",
    "language",
    "max_call_duration_seconds",
    "is_default",
)


class AIProfileOut(ResponseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    system_prompt: str
    greeting: str | None
    llm_model: str | None
    temperature: float
    max_tokens: int
    voice: str | None
    language: str
    max_call_duration_seconds: int
    transfer_number: str | None
    is_default: bool
    created_at: datetime
    updated_at: datetime
