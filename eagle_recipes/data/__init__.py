"""Conversation formats in and out; chat-template rendering with assistant-only loss masks."""
