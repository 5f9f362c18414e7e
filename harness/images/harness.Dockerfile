# The harness image: the fault proxy (`gauntlet proxy`) and the mock LLM
# provider (`gauntlet mock-llm`) run from it, one container each. Built from
# the static `gauntlet` binary alone by `gauntlet images build`.
FROM scratch
COPY gauntlet /gauntlet
ENTRYPOINT ["/gauntlet"]
