# Full evaluation of the module through nix-darwin's eval-config.nix with a stand-in pkgs.
# Needs checkouts of nix-darwin and nixpkgs.lib (see eval-local.sh); returns
# { failures = [ … ]; facts = { … }; } and eval-local.sh fails unless failures is empty.
{
  lib,
  nix-darwin,
  # Directory holding the test's token files (macos.token, linux.token).
  tokenDir ? "/tmp/gitlab-runner-tart-test",
  # A token value written into those files, to prove it reaches no store text.
  token ? "glrt-TEST-never-in-the-store",
}:
let
  fakeHash = name: builtins.substring 0 32 (builtins.hashString "sha256" name);
  fakeDrv =
    name:
    let
      self = {
        type = "derivation";
        inherit name;
        outPath = "/nix/store/${fakeHash name}-${name}";
        drvPath = "/nix/store/${fakeHash "${name}.drv"}-${name}.drv";
        meta.mainProgram = name;
        outputs = [ "out" ];
        outputName = "out";
        out = self;
      };
    in
    self;
  # Texts of every file "written to the store", to search them for the token.
  textDrv = name: text: fakeDrv name // { inherit text; };
  stub = {
    inherit lib;
    stdenv = {
      shell = "${fakeDrv "bash"}/bin/bash";
      hostPlatform = lib.systems.elaborate "aarch64-darwin";
      isDarwin = true;
    };
    writeText = textDrv;
    writeScript = textDrv;
    writeShellScriptBin = name: text: textDrv name text;
    writeScriptBin = name: text: textDrv name text;
    runCommand = name: _: _: fakeDrv name;
    buildEnv = a: fakeDrv a.name;
    callPackage =
      _: _:
      fakeDrv "called"
      // {
        darwin-option = fakeDrv "darwin-option";
        darwin-rebuild = fakeDrv "darwin-rebuild";
        darwin-version = fakeDrv "darwin-version";
      };
  }
  // lib.genAttrs [
    "nix"
    "zsh"
    "nix-zsh-completions"
    "texinfoInteractive"
    "bashInteractive"
    "nix-info"
    "coreutils"
    "gnugrep"
    "tart"
    "gitlab-runner"
    # Only for the full activate script:
    "jq"
    "openssh"
    "gnused"
    "rsync"
  ] fakeDrv;

  driver = fakeDrv "gitlab-runner-tart-driver";

  evalHost =
    extra:
    import "${nix-darwin}/eval-config.nix" {
      inherit lib;
      # nix-darwin-26.05 checks for a 26.05 lib; the nixpkgs.lib checkout is 26.11pre.
      enableNixpkgsReleaseCheck = false;
      modules = [
        (
          { lib, ... }:
          {
            _module.args.pkgs = lib.mkForce stub;
            nixpkgs.hostPlatform = "aarch64-darwin";
          }
        )
        ../../darwin-modules
        ./example-host.nix
        {
          services.gitlab-runner-tart = {
            package = driver;
            runners.macos.authenticationTokenFile = lib.mkForce "${tokenDir}/macos.token";
            runners.linux.authenticationTokenFile = lib.mkForce "${tokenDir}/linux.token";
          };
        }
      ]
      ++ extra;
    };

  good = evalHost [ ];
  cfgOf = e: e.config.services.gitlab-runner-tart;
  c = good.config;
  r = (cfgOf good).rendered;

  # toPlist indents with tabs; drop them so that checks can match key/value pairs.
  untab = builtins.replaceStrings [ "\t" ] [ "" ];
  agentPlist = untab c.environment.userLaunchAgents."org.nixos.gitlab-runner-tart.plist".text;
  gcPlist = untab c.environment.userLaunchAgents."org.nixos.gitlab-runner-tart-gc.plist".text;
  agentScript = c.launchd.user.agents.gitlab-runner-tart.command.text;
  gcScript = c.launchd.user.agents.gitlab-runner-tart-gc.command.text;
  activation = c.system.activationScripts.launchd.text;
  specText = r.specFile.text;
  spec = builtins.fromJSON specText;
  yamls = lib.mapAttrs (_: f: builtins.fromJSON f.text) r.driverConfigFiles;
  storeTexts = [
    specText
    agentPlist
    gcPlist
    agentScript
    gcScript
    activation
  ]
  ++ map (f: f.text) (lib.attrValues r.driverConfigFiles);

  failedMessages = e: map (a: a.message) (lib.filter (a: !a.assertion) (cfgOf e).rendered.assertions);
  # Our assertions must also reach nix-darwin's `assertions` (forcing only ours).
  inDarwinAssertions =
    e: msg: lib.any (a: (builtins.tryEval (a.message == msg)).value or false) e.config.assertions;

  tooMany = evalHost [ { services.gitlab-runner-tart.concurrency = lib.mkForce 3; } ];
  tooManyLinux = evalHost [
    {
      services.gitlab-runner-tart.concurrency = lib.mkForce 3;
      services.gitlab-runner-tart.linuxGuestsOnly = true;
    }
  ];
  noPrimary = evalHost [ { system.primaryUser = lib.mkForce null; } ];
  storeToken = evalHost [
    {
      services.gitlab-runner-tart.runners.macos.authenticationTokenFile =
        lib.mkOverride 10 "/nix/store/00000000000000000000000000000000-macos.token";
    }
  ];

  has = s: text: lib.hasInfix s text;
  toolPath = lib.concatStringsSep ":" [
    "${driver}/bin"
    "${stub.tart}/bin"
    "${stub.gitlab-runner}/bin"
    "/usr/bin"
    "/bin"
    "/usr/sbin"
    "/sbin"
  ];

  checks = {
    "agent plist: label" = has "<string>org.nixos.gitlab-runner-tart</string>" agentPlist;
    "agent plist: KeepAlive" = has "<key>KeepAlive</key>\n<true/>" agentPlist;
    "agent plist: RunAtLoad" = has "<key>RunAtLoad</key>\n<true/>" agentPlist;
    "agent plist: runs the script after wait4path" = has "/bin/wait4path /nix/store &amp;&amp; exec ${c.launchd.user.agents.gitlab-runner-tart.command}" agentPlist;
    "agent plist: log path" = has "<string>/Users/ci/Library/Logs/gitlab-runner-tart/gitlab-runner.log</string>" agentPlist;
    "agent plist: working directory" = has "<key>WorkingDirectory</key>\n<string>/Users/ci/.gitlab-runner</string>" agentPlist;
    "agent plist: PATH has driver, tart, gitlab-runner, system dirs" = has "<string>${toolPath}</string>" agentPlist;
    "agent plist: Interactive" = has "<string>Interactive</string>" agentPlist;
    "agent script: renders config.toml from the spec" = has "'${driver}/bin/gitlab-runner-tart-driver' runner-config --spec '${r.specFile}' --output '/Users/ci/.gitlab-runner/config.toml'" agentScript;
    "agent script: execs gitlab-runner" = has "exec '${stub.gitlab-runner}/bin/gitlab-runner' run --config '/Users/ci/.gitlab-runner/config.toml'" agentScript;
    "gc plist: StartInterval" = has "<key>StartInterval</key>\n<integer>3600</integer>" gcPlist;
    "gc script: sweeps with each driver config" = lib.all (
      f: has "gc --config '${f}'" gcScript
    ) (lib.attrValues r.driverConfigFiles);
    "user agent requires the primary user" = lib.elem "launchd.user.agents.gitlab-runner-tart" c.system.requiresPrimaryUser;
    "spec: concurrent = 2" = spec.concurrent == 2;
    "spec: every runner's concurrency equals concurrent" = lib.all (x: x.concurrency == spec.concurrent) spec.runners;
    "spec: token file paths, sorted runners" =
      map (x: x.token_file) spec.runners == [
        "${tokenDir}/linux.token"
        "${tokenDir}/macos.token"
      ];
    "spec: names" = map (x: x.name) spec.runners == [
      "tart-linux"
      "macos"
    ];
    "spec: driver and its config" = lib.all (
      x: x.driver == "${driver}/bin/gitlab-runner-tart-driver" && lib.hasPrefix "/nix/store/" x.driver_config
    ) spec.runners;
    "spec: extraConfig" = (builtins.head spec.runners).extra == {
      request_concurrency = 2;
    };
    "no token in any store text" = !(lib.any (has token) storeTexts);
    "driver yaml: macos" = yamls.macos == {
      tart_executable = "${stub.tart}/bin/tart";
      concurrency = 2;
      builds_dir = "/Users/ci/tart/builds";
      cache_dir = "/Users/ci/tart/cache";
      volumes = [ "/Users/ci/tart/shared:/Volumes/shared:ro" ];
      allow_images = [ "^ghcr\\.io/cirruslabs/macos-.*$" ];
      default_image = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest";
      pull_policy = "if-not-present";
      ssh_username = "admin";
      ssh_password_file = "/Users/ci/.config/gitlab-runner/guest-password";
      cpu = "auto";
      memory = "auto";
    };
    "driver yaml: linux with settings" = yamls.linux == {
      tart_executable = "${stub.tart}/bin/tart";
      concurrency = 2;
      cache_dir = "/Users/ci/tart/cache";
      default_image = "ghcr.io/cirruslabs/ubuntu:latest";
      cpu = 4;
      memory = 8192;
      macos_vm_limit = 2;
    };
    "activation: dirs owned by the user" = lib.all (p: has "gitlab_runner_tart_dir ${p}" activation) [
      "0700 '/Users/ci/.gitlab-runner'"
      "0755 '/Users/ci/Library/Logs/gitlab-runner-tart'"
      "0750 '/Users/ci/tart/builds'"
      "0750 '/Users/ci/tart/cache'"
    ];
    "activation: volume host dir created if missing" = has "gitlab_runner_tart_dir_if_missing 0750 '/Users/ci/tart/shared'" activation;
    "activation: before launchd reloads services" = lib.hasPrefix "# gitlab-runner-tart" activation;
    "activation: in the activate script" = has "setting up gitlab-runner-tart directories" c.system.activationScripts.script.text;
    "good config: all our assertions hold" = failedMessages good == [ ];
    "good config: no warnings" = c.warnings == [ ];
    "concurrency 3: assertion fires" =
      lib.any (lib.hasPrefix "services.gitlab-runner-tart.concurrency is 3") (failedMessages tooMany)
      && builtins.length (failedMessages tooMany) == 1;
    "concurrency 3: reaches nix-darwin's assertions" = inDarwinAssertions tooMany (builtins.head (failedMessages tooMany));
    "concurrency 3 with linuxGuestsOnly: allowed" = failedMessages tooManyLinux == [ ];
    "concurrency 3: spec and yaml follow" =
      (builtins.fromJSON (cfgOf tooManyLinux).rendered.specFile.text).concurrent == 3
      && (cfgOf tooManyLinux).rendered.driverConfigs.macos.concurrency == 3;
    "no primary user: assertion fires" = lib.any (lib.hasPrefix "services.gitlab-runner-tart.user is not set") (failedMessages noPrimary);
    "token file in the store: warning" = lib.any (lib.hasInfix "authenticationTokenFile (/nix/store/") storeToken.config.warnings;
  };
in
{
  failures = lib.attrNames (lib.filterAttrs (_: ok: !ok) checks);
  passed = lib.length (lib.attrNames (lib.filterAttrs (_: ok: ok) checks));
  inherit specText activation;
  yamlTexts = lib.mapAttrs (_: f: f.text) r.driverConfigFiles;
  agentScriptText = agentScript;
  agentPlistText = agentPlist;
}
