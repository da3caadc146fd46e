{
  description = "clima (Tweets del Clima): HTTP -> gRPC -> Kafka + RabbitMQ -> Redis + Valkey, in Rust";

  inputs = {
    # crane v0.22 dropped nixos-25.05 (and its rustc 1.86 is below our rust-version 1.88);
    # crane's master, pinned here by commit, is tested on 26.05. ci/deploy_rules.py checks both.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane/2c71e194474d13de031d729b729c968ddbe3507f";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, crane, flake-utils }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" ] (system:
      let
        pkgs = nixpkgs.legacyPackages.${system};
        lib = pkgs.lib;
        craneLib = crane.mkLib pkgs;
        version = "0.1.0";

        # Cargo sources plus what the build reads besides Rust: the protos, the dashboard page
        # and the sample tweets (ci/deploy_rules.py checks every include_str! is kept).
        src = lib.cleanSourceWith {
          src = ./.;
          filter = path: type:
            (craneLib.filterCargoSources path type)
            || (builtins.match ".*/proto/.*\\.proto$" path != null)
            || (builtins.match ".*/assets/.*\\.html$" path != null)
            || (builtins.match ".*/clima-tweet/src/sample\\.txt$" path != null);
        };

        commonArgs = {
          inherit src version;
          pname = "clima";
          strictDeps = true;
          cargoExtraArgs = "--locked";
          # rdkafka builds its bundled librdkafka with ./configure and make, with OpenSSL for TLS.
          nativeBuildInputs = [ pkgs.pkg-config pkgs.perl pkgs.python3 pkgs.gnumake ];
          buildInputs = [ pkgs.zlib pkgs.openssl ];
        };

        # Dependencies are built once and cached separately from clima's own crates.
        cargoArtifacts = craneLib.buildDepsOnly commonArgs;

        clima = craneLib.buildPackage (commonArgs // {
          inherit cargoArtifacts;
          cargoExtraArgs = "--locked -p clima";
          # The integration tests need Kafka, RabbitMQ, Redis and Valkey: run them with ci/test.
          doCheck = false;
        });

        # One image per service: the clima binary's closure, CA certificates and nothing else,
        # run as a non-root user.
        services = {
          api = [ "api" ];
          writer = [ "writer" ];
          consumer = [ "consumer" ];
          dashboard = [ "dashboard" ];
        };
        mkImage = name: args: pkgs.dockerTools.buildLayeredImage {
          name = "clima-${name}";
          tag = version;
          contents = [ pkgs.cacert ];
          config = {
            # The subcommand is the default Cmd: a Deployment's `args` replaces it
            # (with it in the Entrypoint, `args: [api]` would run `clima api api`).
            Entrypoint = [ "${clima}/bin/clima" ];
            Cmd = args;
            User = "65532:65532";
            Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ];
            Labels = {
              "org.opencontainers.image.title" = "clima-${name}";
              "org.opencontainers.image.version" = version;
            };
          };
        };
        images = lib.mapAttrs mkImage services;

        # nix run .#push-images: copies every image to $HARBOR (e.g. harbor.example.com/clima).
        # Credentials: HARBOR_USERNAME / HARBOR_PASSWORD, or a prior `skopeo login`.
        pushImages = pkgs.writeShellApplication {
          name = "push-images";
          runtimeInputs = [ pkgs.skopeo ];
          text = ''
            : "''${HARBOR:?set HARBOR to the Harbor registry and project, e.g. harbor.example.com/clima}"
            creds=()
            if [[ -n "''${HARBOR_USERNAME:-}" ]]; then
              creds=(--dest-creds "$HARBOR_USERNAME:''${HARBOR_PASSWORD:?set HARBOR_PASSWORD too}")
            fi
            ${lib.concatStringsSep "\n" (lib.mapAttrsToList (name: image: ''
              skopeo copy "''${creds[@]}" "docker-archive:${image}" "docker://$HARBOR/clima-${name}:${version}"
            '') images)}
          '';
        };

        # Only the tests that need no running services; ci/test runs them all.
        unitTestArgs = "-p clima-tweet -p clima-api -p clima-broker --lib";
      in
      {
        packages = {
          default = clima;
          inherit clima;
          # nix build .#images: every service image, as docker-archive tarballs.
          images = pkgs.linkFarm "clima-images"
            (lib.mapAttrsToList (name: image: { name = "clima-${name}.tar.gz"; path = image; }) images);
        } // lib.mapAttrs' (name: image: lib.nameValuePair "image-${name}" image) images;

        apps.push-images = {
          type = "app";
          program = "${pushImages}/bin/push-images";
        };

        checks = {
          inherit clima;
          clippy = craneLib.cargoClippy (commonArgs // {
            inherit cargoArtifacts;
            cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
          });
          fmt = craneLib.cargoFmt { inherit src version; pname = "clima"; };
          unit-tests = craneLib.cargoNextest (commonArgs // {
            inherit cargoArtifacts;
            cargoNextestExtraArgs = unitTestArgs;
          });
        };

        # Everything the local stack and the tests use (tansu is built by ci/infra-up).
        devShells.default = pkgs.mkShell {
          inputsFrom = [ clima ];
          packages = with pkgs; [
            cargo rustc clippy rustfmt cargo-nextest
            redis valkey rabbitmq-server
            grpcurl buf protobuf
            kubectl kustomize skopeo umoci
            nodejs python3 chromium
          ];
        };
      });
}
