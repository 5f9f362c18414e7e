//! Rendering an answer: the chat completion envelope or its event stream, with
//! the effect of the matching rule applied. Pure: the server decides which
//! effect applies and sends what this module renders.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use orchestrator::plan::ActionPlan;
use serde::Serialize;

use super::content::{
    cut, inject, pick_violation, render, tokens, truncate_half, violate, with_preamble,
};
use super::journal::Usage;
use super::program::{DEFAULT_INJECTION, Effect, RetryAfter, Target};
use super::request::{ApiError, ChatRequest};

/// The model `GET /v1/models` lists. Requests may name any model; it is echoed.
pub const MODEL_ID: &str = "gauntlet-mock";

/// The `system_fingerprint` of every answer.
const FINGERPRINT: &str = "gauntlet-mock";

/// The most content bytes in one stream chunk. Small, so that even a short
/// plan arrives in several deltas, as from a real model.
const CHUNK_BYTES: usize = 16;

/// Marks where an oversized answer's padding goes. It ends the reasoning, and
/// everything serialised after it in its event is fixed text, so its last
/// occurrence is the one the mock put there, whatever the request echoed.
const PAD_MARK: &str = "GAUNTLET-MOCK-PAD";

/// Padding is sent in chunks of this size from one static buffer, so an
/// oversized body costs no memory however large it is.
const PAD_CHUNK: usize = 64 * 1024;
static PAD: [u8; PAD_CHUNK] = [b'x'; PAD_CHUNK];

/// A piece of a response body.
#[derive(Clone, Debug)]
pub(crate) enum Piece {
    /// Bytes as they are.
    Data(Bytes),
    /// This many padding bytes.
    Pad(u64),
}

/// A response body as pieces.
#[derive(Clone, Debug, Default)]
pub(crate) struct Payload {
    pub pieces: Vec<Piece>,
}

impl Payload {
    fn bytes(data: impl Into<Bytes>) -> Payload {
        Payload {
            pieces: vec![Piece::Data(data.into())],
        }
    }

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Data(b) => b.len() as u64,
                Piece::Pad(n) => *n,
            })
            .sum()
    }

    /// The body as chunks, stopping after `limit` bytes.
    pub fn chunks(self, limit: u64) -> Chunks {
        Chunks {
            pieces: self.pieces.into_iter(),
            current: None,
            left: limit,
        }
    }
}

/// The chunks of a [`Payload`], produced lazily.
pub(crate) struct Chunks {
    pieces: std::vec::IntoIter<Piece>,
    current: Option<Piece>,
    left: u64,
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.left == 0 {
                return None;
            }
            let piece = match self.current.take() {
                Some(piece) => piece,
                None => self.pieces.next()?,
            };
            match piece {
                Piece::Data(bytes) if bytes.is_empty() => {}
                Piece::Data(bytes) => {
                    let n = usize::try_from(self.left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    self.left -= n as u64;
                    return Some(bytes.slice(..n));
                }
                Piece::Pad(0) => {}
                Piece::Pad(n) => {
                    let take = n.min(self.left).min(PAD_CHUNK as u64);
                    if n > take {
                        self.current = Some(Piece::Pad(n - take));
                    }
                    self.left -= take;
                    let take = usize::try_from(take).unwrap_or(PAD_CHUNK);
                    return Some(Bytes::from_static(&PAD[..take]));
                }
            }
        }
    }
}

/// How the body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// With `Content-Length`, as a JSON answer.
    Length,
    /// Chunked, as an event stream.
    Chunked,
}

/// A response ready to send.
#[derive(Clone, Debug)]
pub(crate) struct Rendered {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub retry_after: Option<HeaderValue>,
    pub body: Payload,
    pub framing: Framing,
}

impl Rendered {
    fn error(error: &ApiError) -> Rendered {
        Rendered::json(error.status, error.body().to_string())
    }

    fn json(status: StatusCode, body: String) -> Rendered {
        Rendered {
            status,
            content_type: "application/json",
            retry_after: None,
            body: Payload::bytes(body),
            framing: Framing::Length,
        }
    }
}

/// What the server waits for before sending the headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Nothing.
    Now,
    /// This long.
    Delay(Duration),
    /// Until the client gives up or the wait limit passes.
    Hang,
}

/// A stall: send this many body bytes, wait, close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stall {
    pub after_bytes: u64,
    pub duration: Duration,
}

/// Everything about one answer.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub wait: Wait,
    pub rendered: Rendered,
    pub stall: Option<Stall>,
    /// The usage written into the answer, for the journal.
    pub usage: Option<Usage>,
}

/// Facts about the call that the answer shows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    pub seq: u64,
    pub seed: u64,
    pub created_unix_s: u64,
    pub rule_index: Option<usize>,
}

/// The answer to `request`, whose default plan is `plan`, under `effect`.
pub(crate) fn reply(
    request: &ChatRequest,
    plan: &ActionPlan,
    effect: Option<&Effect>,
    call: Call,
) -> Reply {
    let plain = |rendered| Reply {
        wait: Wait::Now,
        rendered,
        stall: None,
        usage: None,
    };
    match effect {
        Some(Effect::Status {
            status,
            retry_after,
            body,
        }) => {
            let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = match body {
                Some(body) => body.to_string(),
                None => {
                    let rule = call.rule_index.unwrap_or_default();
                    ApiError::status(
                        code,
                        format!("mock provider fault: status {status} from rules[{rule}]"),
                    )
                    .body()
                    .to_string()
                }
            };
            let mut rendered = Rendered::json(code, body);
            rendered.retry_after = match retry_after {
                Some(RetryAfter::Seconds(s)) => Some(HeaderValue::from(*s)),
                Some(RetryAfter::Raw(raw)) => HeaderValue::from_str(raw).ok(),
                None => None,
            };
            plain(rendered)
        }
        Some(Effect::Hang) => Reply {
            wait: Wait::Hang,
            ..plain(Rendered::error(&ApiError::status(
                StatusCode::GATEWAY_TIMEOUT,
                "the mock provider held the request until its wait limit (hang effect)",
            )))
        },
        Some(Effect::Oversized { size_bytes }) => oversized(request, plan, *size_bytes, call),
        _ => answer(request, plan, effect, call),
    }
}

/// A completion, possibly spoiled.
fn answer(request: &ChatRequest, plan: &ActionPlan, effect: Option<&Effect>, call: Call) -> Reply {
    let json_mode = request.json_mode;
    let rule_index = call.rule_index.unwrap_or_default();
    let mut finish = "stop";
    let content = match effect {
        Some(Effect::SchemaViolation { violation }) => {
            let violation =
                violation.unwrap_or_else(|| pick_violation(call.seed, rule_index, call.seq));
            render(&violate(plan, violation), json_mode)
        }
        Some(Effect::Injection { payload, field }) => {
            let payload = payload.as_deref().unwrap_or(DEFAULT_INJECTION);
            render(&inject(plan, payload, *field), json_mode)
        }
        Some(Effect::TruncatedJson {
            target: Target::Content,
        }) => {
            finish = "length";
            truncate_half(&render(plan, json_mode))
        }
        Some(Effect::InvalidJson {
            target: Target::Content,
        }) => with_preamble(&render(plan, json_mode)),
        _ => render(plan, json_mode),
    };
    // A model stops at max_tokens, mid-word if need be, and says so.
    let (content, finish) = match request.max_tokens {
        Some(max) if tokens(content.len() as u64) > max => {
            let bytes = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
            (cut(&content, bytes).to_owned(), "length")
        }
        _ => (content, finish),
    };
    let counted = Usage {
        prompt_tokens: request.prompt_tokens,
        completion_tokens: tokens(content.len() as u64),
        total_tokens: request.prompt_tokens + tokens(content.len() as u64),
    };
    let usage = match effect {
        Some(Effect::Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
        }) => Usage {
            prompt_tokens: *prompt_tokens,
            completion_tokens: *completion_tokens,
            total_tokens: total_tokens
                .unwrap_or_else(|| prompt_tokens.saturating_add(*completion_tokens)),
        },
        _ => counted,
    };
    let message = Message {
        id: format!("chatcmpl-mock-{}", call.seq),
        created: call.created_unix_s,
        model: &request.model,
        content: &content,
        finish,
        usage,
    };
    let (body, framing, content_type, reported) = if request.stream {
        let reported = request.include_usage.then_some(usage);
        let events = events(&message, reported, Deltas::Small);
        let body = match effect {
            Some(Effect::TruncatedJson {
                target: Target::Body,
            }) => {
                let all = events.concat();
                Payload::bytes(all[..all.len() / 2].to_vec())
            }
            Some(Effect::InvalidJson {
                target: Target::Body,
            }) => {
                let broken: Vec<u8> = events
                    .iter()
                    .map(|e| break_event(e))
                    .collect::<Vec<_>>()
                    .concat();
                Payload::bytes(broken)
            }
            _ => Payload::bytes(events.concat()),
        };
        (body, Framing::Chunked, "text/event-stream", reported)
    } else {
        let json = completion_json(&message);
        let body = match effect {
            Some(Effect::TruncatedJson {
                target: Target::Body,
            }) => json[..json.len() / 2].to_owned(),
            Some(Effect::InvalidJson {
                target: Target::Body,
            }) => break_json(&json),
            _ => json,
        };
        (
            Payload::bytes(body),
            Framing::Length,
            "application/json",
            Some(usage),
        )
    };
    Reply {
        wait: match effect {
            Some(Effect::Delay { delay_ms }) => Wait::Delay(Duration::from_millis(*delay_ms)),
            _ => Wait::Now,
        },
        rendered: Rendered {
            status: StatusCode::OK,
            content_type,
            retry_after: None,
            body,
            framing,
        },
        stall: match effect {
            Some(Effect::Stall {
                after_bytes,
                stall_ms,
            }) => Some(Stall {
                after_bytes: *after_bytes,
                duration: Duration::from_millis(*stall_ms),
            }),
            _ => None,
        },
        usage: reported,
    }
}

/// A valid plan whose body is exactly `size_bytes` long: the reasoning ends in
/// padding. When the unpadded answer is already longer, it is sent as is.
/// `max_tokens` does not cut it (the point is a body too large), and usage
/// counts `size_bytes / 4` completion tokens, rounded up.
fn oversized(request: &ChatRequest, plan: &ActionPlan, size_bytes: u64, call: Call) -> Reply {
    let mut marked = plan.clone();
    marked.reasoning = format!("{} {PAD_MARK}", marked.reasoning);
    let content = render(&marked, request.json_mode);
    let usage = Usage {
        prompt_tokens: request.prompt_tokens,
        completion_tokens: tokens(size_bytes),
        total_tokens: request.prompt_tokens + tokens(size_bytes),
    };
    let message = Message {
        id: format!("chatcmpl-mock-{}", call.seq),
        created: call.created_unix_s,
        model: &request.model,
        content: &content,
        finish: "stop",
        usage,
    };
    // Render with the mark, then split there: everything before it, the
    // padding in its place, everything after.
    let (before, marked_part, after, framing, content_type, reported) = if request.stream {
        let reported = request.include_usage.then_some(usage);
        // The whole content in one delta, so that the mark is not split.
        let events = events(&message, reported, Deltas::One);
        // Events: role, the content, finish, maybe usage, done.
        let (head, rest) = events.split_at(1.min(events.len()));
        let (marked_event, tail) = rest
            .split_first()
            .map_or((Vec::new(), &[][..]), |(m, t)| (m.clone(), t));
        (
            head.concat(),
            marked_event,
            tail.concat(),
            Framing::Chunked,
            "text/event-stream",
            reported,
        )
    } else {
        (
            Vec::new(),
            completion_json(&message).into_bytes(),
            Vec::new(),
            Framing::Length,
            "application/json",
            Some(usage),
        )
    };
    let mark = PAD_MARK.as_bytes();
    let at = marked_part
        .windows(mark.len())
        .rposition(|w| w == mark)
        .unwrap_or(marked_part.len());
    let prefix = [&before[..], &marked_part[..at]].concat();
    let suffix = [
        marked_part.get(at + mark.len()..).unwrap_or_default(),
        &after[..],
    ]
    .concat();
    let fixed = (prefix.len() + suffix.len()) as u64;
    let body = Payload {
        pieces: vec![
            Piece::Data(prefix.into()),
            Piece::Pad(size_bytes.saturating_sub(fixed)),
            Piece::Data(suffix.into()),
        ],
    };
    Reply {
        wait: Wait::Now,
        rendered: Rendered {
            status: StatusCode::OK,
            content_type,
            retry_after: None,
            body,
            framing,
        },
        stall: None,
        usage: reported,
    }
}

/// The parts of a completion the envelope and the chunks share.
struct Message<'a> {
    id: String,
    created: u64,
    model: &'a str,
    content: &'a str,
    finish: &'static str,
    usage: Usage,
}

// Field order matters: each struct ends with fixed fields after the content,
// which the oversized answer relies on (see `PAD_MARK`).

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [CompletionChoice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

fn completion_json(message: &Message<'_>) -> String {
    let completion = Completion {
        id: &message.id,
        object: "chat.completion",
        created: message.created,
        model: message.model,
        system_fingerprint: FINGERPRINT,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: message.content,
                refusal: None,
            },
            logprobs: None,
            finish_reason: message.finish,
        }],
        usage: message.usage,
    };
    // Serialising plain structs to a string cannot fail.
    serde_json::to_string(&completion).unwrap_or_default()
}

/// How a stream carries the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deltas {
    /// In deltas of at most [`CHUNK_BYTES`].
    Small,
    /// In one delta.
    One,
}

/// The stream's events, each `data: …\n\n`: the role, the content's deltas,
/// the finish reason, the usage when `usage` is given, and `[DONE]`.
fn events(message: &Message<'_>, usage: Option<Usage>, delivery: Deltas) -> Vec<Vec<u8>> {
    let chunk = |delta: Delta<'_>, finish: Option<&str>| -> Vec<u8> {
        event(&Chunk {
            id: &message.id,
            object: "chat.completion.chunk",
            created: message.created,
            model: message.model,
            system_fingerprint: FINGERPRINT,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: None,
        })
    };
    let mut out = vec![chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    )];
    let pieces = match delivery {
        Deltas::Small => split_content(message.content),
        Deltas::One => vec![message.content],
    };
    for piece in pieces {
        out.push(chunk(
            Delta {
                role: None,
                content: Some(piece),
            },
            None,
        ));
    }
    out.push(chunk(
        Delta {
            role: None,
            content: None,
        },
        Some(message.finish),
    ));
    if let Some(usage) = usage {
        out.push(event(&Chunk {
            id: &message.id,
            object: "chat.completion.chunk",
            created: message.created,
            model: message.model,
            system_fingerprint: FINGERPRINT,
            choices: Vec::new(),
            usage: Some(usage),
        }));
    }
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

fn split_content(content: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let mut piece = cut(rest, CHUNK_BYTES);
        if piece.is_empty() {
            // A character longer than a chunk goes whole.
            let end = rest.char_indices().nth(1).map_or(rest.len(), |(i, _)| i);
            piece = &rest[..end];
        }
        pieces.push(piece);
        rest = &rest[piece.len()..];
    }
    pieces
}

fn event(chunk: &Chunk<'_>) -> Vec<u8> {
    let json = serde_json::to_string(chunk).unwrap_or_default();
    format!("data: {json}\n\n").into_bytes()
}

/// JSON with a trailing comma before its final brace: recognisably a
/// completion, but no parser accepts it.
fn break_json(json: &str) -> String {
    match json.strip_suffix('}') {
        Some(open) => format!("{open},}}"),
        None => format!("{json},"),
    }
}

fn break_event(event: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(event);
    match text
        .strip_prefix("data: {")
        .and_then(|t| t.strip_suffix("\n\n"))
    {
        Some(inner) => format!("data: {}\n\n", break_json(&format!("{{{inner}"))).into_bytes(),
        None => event.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stop_at_the_limit_and_pad_lazily() {
        let payload = Payload {
            pieces: vec![
                Piece::Data(Bytes::from_static(b"abc")),
                Piece::Pad(PAD_CHUNK as u64 + 5),
                Piece::Data(Bytes::from_static(b"z")),
            ],
        };
        assert_eq!(payload.len(), PAD_CHUNK as u64 + 9);
        let sizes: Vec<usize> = payload.clone().chunks(u64::MAX).map(|c| c.len()).collect();
        assert_eq!(sizes, [3, PAD_CHUNK, 5, 1]);
        let cut: Vec<Bytes> = payload.chunks(4).collect();
        assert_eq!(cut, [Bytes::from_static(b"abc"), Bytes::from_static(b"x")]);
    }

    #[test]
    fn broken_json_does_not_parse() {
        let json = r#"{"a":1}"#;
        assert_eq!(break_json(json), r#"{"a":1,}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&break_json(json)).is_err());
        assert_eq!(
            break_event(b"data: {\"a\":1}\n\n"),
            b"data: {\"a\":1,}\n\n".to_vec()
        );
        assert_eq!(
            break_event(b"data: [DONE]\n\n"),
            b"data: [DONE]\n\n".to_vec()
        );
    }

    #[test]
    fn content_splits_into_small_pieces_that_rejoin() {
        let text = "ünïcödé text that is longer than one chunk of sixteen bytes";
        let pieces = split_content(text);
        assert!(pieces.len() > 2);
        assert!(
            pieces
                .iter()
                .all(|p| p.len() <= CHUNK_BYTES && !p.is_empty())
        );
        assert_eq!(pieces.concat(), text);
    }
}
