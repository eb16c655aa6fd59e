# Evaluation of the NixOS module (nixos-modules/) with nixpkgs.lib's `lib.evalModules`.
# NixOS itself is not available offline, so `nixosStubs` declares the few NixOS options the
# module sets (users, systemd units, /etc files, assertions, warnings) as plain attribute
# sets: this checks what the module renders and refuses, not NixOS's own handling of it.
# Returns { failures = [ … ]; passed = N; … } like eval.nix.
{
  lib,
  # Directory of the test's token files (gitlab.token, orchard.token).
  tokenDir ? "/tmp/gitlab-runner-tart-test",
  # A token value written into those files, to prove it reaches no store text.
  token ? "glrt-TEST-never-in-the-store",
  # The controller and its certificate's fingerprint (module-eval.sh passes a fake one's).
  orchardUrl ? "https://orchard.example.com:6120",
  orchardFingerprint ? "AB:CD",
}:
let
  inherit (import ./fakes.nix) fakeDrv textDrv;
  stub = {
    inherit lib;
    stdenv.shell = "${fakeDrv "bash"}/bin/bash";
    writeText = textDrv;
    writeScript = textDrv;
    callPackage = _: _: fakeDrv "gitlab-runner-tart-driver";
  }
  // lib.genAttrs [
    "gitlab-runner"
    "openssh"
    "coreutils"
  ] fakeDrv;

  nixosStubs =
    { lib, ... }:
    let
      inherit (lib) mkOption types;
      attrs = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
    in
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        users.users = attrs;
        users.groups = attrs;
        environment.etc = attrs;
        systemd.services = attrs;
        systemd.paths = attrs;
        systemd.timers = attrs;
        systemd.tmpfiles.rules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        # Set by the example host only.
        boot = mkOption { type = types.anything; };
        fileSystems = mkOption { type = types.anything; };
        system.stateVersion = mkOption { type = types.str; };
      };
    };

  host = {
    services.gitlab-runner-tart = {
      enable = true;
      fleet.workers = 3;
      runners.fleet = {
        url = "https://gitlab.example.com";
        authenticationTokenFile = "${tokenDir}/gitlab.token";
        sshUser = "admin";
        sshPasswordFile = "/var/lib/gitlab-runner-tart/guest-password";
        defaultImage = "ghcr.io/cirruslabs/macos-sequoia-base:latest";
        orchard = {
          url = orchardUrl;
          serviceAccount = "gitlab-runner";
          tokenFile = "${tokenDir}/orchard.token";
          caFingerprint = orchardFingerprint;
          labels.xcode = "16";
          queueTimeout = 1800;
          hostDirs.tools = "/opt/ci-tools";
          maxVmAge = 7200;
        };
      };
    };
  };

  evalHost =
    extra:
    (lib.evalModules {
      modules = [
        nixosStubs
        { _module.args.pkgs = stub; }
        ../../nixos-modules
        host
      ]
      ++ extra;
    }).config;

  good = evalHost [ ];
  example =
    (lib.evalModules {
      modules = [
        nixosStubs
        { _module.args.pkgs = stub; }
        ../../nixos-modules
        ./example-nixos.nix
      ];
    }).config;
  cfgOf = c: c.services.gitlab-runner-tart;
  r = (cfgOf good).rendered;
  spec = builtins.fromJSON r.specFile.text;
  yaml = builtins.fromJSON r.driverConfigFiles.fleet.text;
  unit = good.systemd.services.gitlab-runner-tart;
  configUnit = good.systemd.services.gitlab-runner-tart-config;
  script = r.runnerScript.text;
  gcUnit = good.systemd.services.gitlab-runner-tart-gc;
  asTart = evalHost [ { services.gitlab-runner-tart.runners.fleet.backend = "tart"; } ];

  failedMessages = c: map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
  at = "services.gitlab-runner-tart";
  refusedAt =
    prefix: settings:
    let
      msgs = failedMessages (evalHost [ { services.gitlab-runner-tart = settings; } ]);
    in
    builtins.length msgs == 1 && lib.hasPrefix prefix (builtins.head msgs);
  orchardOf = o: { runners.fleet.orchard = o; };

  settingsChanged = evalHost [
    {
      services.gitlab-runner-tart.runners.fleet = {
        defaultImage = lib.mkForce "ghcr.io/cirruslabs/macos-tahoe-base:latest";
        orchard.labels.xcode = lib.mkForce "26";
      };
      services.gitlab-runner-tart.fleet.workers = lib.mkForce 4;
    }
  ];
  driverUpgraded = evalHost [
    {
      services.gitlab-runner-tart.package = lib.mkForce (fakeDrv "gitlab-runner-tart-driver-next");
    }
  ];
  has = lib.hasInfix;
  storeTexts = [
    r.specFile.text
    r.driverConfigFiles.fleet.text
    script
  ];

  checks = {
    "concurrent is the fleet's capacity (3 workers x 2 VMs)" =
      spec.concurrent == 6 && lib.all (x: x.concurrency == 6) spec.runners;
    "driver yaml: backend orchard with its section, no Tart, Softnet or host dirs" = yaml == {
      backend = "orchard";
      concurrency = 6;
      default_image = "ghcr.io/cirruslabs/macos-sequoia-base:latest";
      ssh_username = "admin";
      ssh_password_file = "/var/lib/gitlab-runner-tart/guest-password";
      orchard = {
        url = orchardUrl;
        service_account = "gitlab-runner";
        token_file = "${tokenDir}/orchard.token";
        ca_fingerprint = orchardFingerprint;
        labels.xcode = "16";
        queue_timeout = 1800;
        host_dirs.tools = "/opt/ci-tools";
        max_vm_age = 7200;
      };
    };
    "spec: the GitLab token by file path" =
      map (x: x.token_file) spec.runners == [ "${tokenDir}/gitlab.token" ];
    "no token in any store text" = !(lib.any (has token) storeTexts);
    "runner unit: runs the drain-aware script as the system user" =
      unit.serviceConfig.ExecStart == r.runnerScript
      && unit.serviceConfig.User == "gitlab-runner-tart"
      && good.users.users.gitlab-runner-tart.isSystemUser
      && good.users.groups ? gitlab-runner-tart;
    "runner unit: a switch reloads it (the script drains), stopping drains too" =
      unit.reloadIfChanged
      && unit.serviceConfig.ExecReload == "${stub.coreutils}/bin/kill -TERM $MAINPID"
      && unit.serviceConfig.KillMode == "mixed"
      && unit.serviceConfig.Restart == "always"
      && unit.serviceConfig.TimeoutStopSec == 3600 + 3600 + 60;
    "runner script: renders the spec at its fixed path, PATH has ssh" =
      has "runner-config --spec '/etc/gitlab-runner-tart/spec.json'" script
      && has "${stub.openssh}/bin" script
      && good.environment.etc."gitlab-runner-tart/spec.json".source == r.specFile;
    "switch changing only runner settings: runner unit unchanged, config rendered again" =
      settingsChanged.systemd.services.gitlab-runner-tart == unit
      && settingsChanged.systemd.services.gitlab-runner-tart-config.restartTriggers
        != configUnit.restartTriggers;
    "switch upgrading the driver: the runner unit changes (a drained reload)" =
      driverUpgraded.systemd.services.gitlab-runner-tart.serviceConfig.ExecStart
      != unit.serviceConfig.ExecStart;
    "a token file change renders config.toml again" =
      good.systemd.paths.gitlab-runner-tart-token.pathConfig.PathChanged == [
        "${tokenDir}/gitlab.token"
      ]
      && good.systemd.services.gitlab-runner-tart-token.serviceConfig.ExecStart
        == configUnit.serviceConfig.ExecStart;
    "gc: a timer sweeps with each driver config" =
      has "gc --config '${r.driverConfigFiles.fleet}'" gcUnit.script
      && good.systemd.timers.gitlab-runner-tart-gc.timerConfig.OnCalendar == "hourly";
    "the example host (docs/nixos.md): all assertions hold, concurrent = 6" =
      failedMessages example == [ ]
      && (builtins.fromJSON (cfgOf example).rendered.specFile.text).concurrent == 6;
    # An Orchard runner without public images refuses every job: the documented example has them.
    "the example host declares the images its jobs may run public" =
      (builtins.fromJSON (cfgOf example).rendered.driverConfigFiles.fleet.text).public_images == [
        "ghcr\\.io/cirruslabs/macos-.*"
      ];
    "good config: all assertions hold, no warnings" =
      failedMessages good == [ ] && good.warnings == [ ];
    "refused: concurrency above the fleet's capacity" = refusedAt "${at}.concurrency (7)" {
      concurrency = 7;
    };
    "refused: 3 macOS VMs per worker" = refusedAt "${at}.fleet.vmsPerWorker is 3" {
      fleet.vmsPerWorker = 3;
    };
    "allowed: 3 VMs per worker with Linux guests only" =
      failedMessages (evalHost [
        {
          services.gitlab-runner-tart.fleet = {
            vmsPerWorker = 3;
            linuxGuestsOnly = true;
          };
        }
      ]) == [ ];
    "refused: a Tart runner on Linux" =
      lib.any (has "backend is \"tart\", but Tart runs only on macOS") (failedMessages asTart);
    "refused: an Orchard runner without its token file" =
      refusedAt "${at}.runners.fleet.orchard: an Orchard runner needs"
        (orchardOf { tokenFile = lib.mkForce null; });
    "refused: caFile and caFingerprint" = refusedAt "${at}.runners.fleet.orchard: set caFile" (
      orchardOf { caFile = "/etc/orchard-ca.pem"; }
    );
    "driver yaml: allowPlainHttp reaches the driver" =
      let
        c = evalHost [
          {
            services.gitlab-runner-tart.runners.fleet.orchard = {
              url = lib.mkForce "http://orchard.internal:6120";
              caFingerprint = lib.mkForce null;
              allowPlainHttp = true;
            };
          }
        ];
        y = builtins.fromJSON (cfgOf c).rendered.driverConfigFiles.fleet.text;
      in
      failedMessages c == [ ] && y.orchard.allow_plain_http;
    "refused: a pinned certificate over plain http" =
      refusedAt "${at}.runners.fleet.orchard.url is plain http"
        (orchardOf { url = lib.mkForce "http://orchard.example.com"; });
    "refused: a relative Orchard token file" = refusedAt "${at}.runners.fleet.orchard.tokenFile" (
      orchardOf { tokenFile = lib.mkForce "orchard.token"; }
    );
    "refused: this host's builds dir for fleet VMs" = refusedAt "${at}.runners.fleet: buildsDir" {
      runners.fleet.buildsDir = "/var/lib/builds";
    };
    "refused: a warm pool, which keeps VMs on this host" =
      refusedAt "${at}.runners.fleet.warm.pool is set"
        { runners.fleet.warm.pool = 1; };
    "refused: settings.orchard" = refusedAt "${at}.runners.fleet.settings.orchard" {
      runners.fleet.settings.orchard.url = "https://x";
    };
    "refused: extraConfig.concurrent, as on a Mac" = refusedAt "${at}.extraConfig.concurrent" {
      extraConfig.concurrent = 10;
    };
    "warning: the Orchard token in the store" = lib.any (has "orchard.tokenFile (/nix/store/") (
      evalHost [
        {
          services.gitlab-runner-tart = orchardOf {
            tokenFile = lib.mkForce "/nix/store/00000000000000000000000000000000-o.token";
          };
        }
      ]
    ).warnings;
  };
in
{
  failures = lib.attrNames (lib.filterAttrs (_: ok: !ok) checks);
  passed = lib.length (lib.attrNames (lib.filterAttrs (_: ok: ok) checks));
  specText = r.specFile.text;
  yamlText = r.driverConfigFiles.fleet.text;
  runnerScriptText = script;
}
