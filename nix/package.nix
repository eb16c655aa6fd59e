# The driver, with its man pages and shell completions.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
}:
let
  cargoToml = lib.importTOML ../Cargo.toml;
  root = ../.;
  # Everything but the Nix, docs and CI files, so that editing those does not rebuild.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.difference root (
      lib.fileset.unions [
        (lib.fileset.maybeMissing ../target)
        (lib.fileset.maybeMissing ../result)
        (lib.fileset.maybeMissing ../.ci)
        (lib.fileset.maybeMissing ../docs)
        (lib.fileset.maybeMissing ../tests/nix)
        ../nix
        ../darwin-modules
        ../flake.nix
        ../flake.lock
      ]
    );
  };
  canRunBinary = stdenv.buildPlatform.canExecute stdenv.hostPlatform;
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # The check phase runs `cargo test` in the build sandbox (no root, no sshd, no /bin/cat, a
  # long $TMPDIR): the end-to-end test targets need all of those, so they are behind the
  # `e2e` cargo feature, which stays off here (./test.sh turns it on).

  # Some unit-level tests (the Orchard client against the fake controller, doctor's probes)
  # listen on and connect to 127.0.0.1; the macOS sandbox denies that unless asked.
  __darwinAllowLocalNetworking = true;

  postInstall = lib.optionalString canRunBinary ''
    exe=$out/bin/gitlab-runner-tart-driver
    mkdir -p "$TMPDIR/man"
    "$exe" generate-manpages "$TMPDIR/man"
    mapfile -t pages < <(find "$TMPDIR/man" -type f -name '*.[1-9]')
    installManPage "''${pages[@]}"
    installShellCompletion --cmd gitlab-runner-tart-driver \
      --bash <("$exe" completions bash) \
      --zsh <("$exe" completions zsh) \
      --fish <("$exe" completions fish)
  '';

  meta = {
    inherit (cargoToml.package) description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "gitlab-runner-tart-driver";
    platforms = lib.platforms.unix;
  };
}
