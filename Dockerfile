# portplane-controller: one static binary on an empty base, as a non-root user.
# Build with `make image` (scripts/image), which compiles the static binary
# first and uses a context holding only it and this file.
FROM scratch
COPY portplane-controller /portplane-controller
# 65532: the "nonroot" uid of distroless images; the chart runs it as this too.
USER 65532:65532
ENTRYPOINT ["/portplane-controller"]
CMD ["run"]
