# The rsvisor image: `docker build -t rsvisor:0.1.0 .`
# (deploy/k8s/deployment.yaml runs this tag; push it to your registry and
# change the image line there).
#
# The build stage makes the same Debian package the tests install
# (scripts/package deb); the runtime stage installs it on a slim Debian
# with nothing else, and runs as an unprivileged user. rsvisor is PID 1:
# it reaps every child, orphans included, and drains on SIGTERM.
#
# For a Python app, add rsvisor to the app's own image instead:
#   COPY --from=rsvisor:0.1.0 /usr/bin/rsvisor /usr/local/bin/rsvisor
# or `pip install rsvisor` next to uvicorn/gunicorn.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/package deb

FROM debian:bookworm-slim
# uid 10001: the user the Kubernetes manifest runs as (runAsUser); the
# package's postinst keeps an existing rsvisor user.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin rsvisor
COPY --from=build /src/target/package/rsvisor_*.deb /tmp/
RUN apt-get install -y --no-install-recommends /tmp/rsvisor_*.deb \
    && rm -rf /tmp/rsvisor_*.deb /var/lib/apt/lists/* /usr/share/doc/rsvisor/README.md
COPY deploy/container/app.toml /etc/rsvisor/app.toml
USER 10001
EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/rsvisor"]
CMD ["serve", "/etc/rsvisor/app.toml"]
