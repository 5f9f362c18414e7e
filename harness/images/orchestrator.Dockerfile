# The orchestrator image: the service, built from nothing but static binaries
# (`gauntlet images build` makes them and this image; no registry is used).
#
# The harness binary travels here too, as the container's fault agent: a
# scratch image has no shell and no tools, so the faults that must act inside
# the container (the memory fault, for one) run `/gauntlet` in it, as nothing
# else could.
#
# The CA certificates come from the build machine: the service's HTTP client
# trusts the system's roots (for real providers over HTTPS) and will not start
# without any.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY orchestrator /orchestrator
COPY gauntlet /gauntlet
EXPOSE 8080
ENTRYPOINT ["/orchestrator"]
