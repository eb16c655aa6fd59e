# NixOS module: a Linux host runs gitlab-runner with this driver, and every job runs in a VM
# on an Orchard fleet of Macs (Tart itself runs only on macOS).
#
# It shares the runner options and the config.toml renderer with the nix-darwin module:
# a token-free spec in the store, rendered into config.toml by `runner-config` with the
# token files, `concurrent` equal to every runner's `--concurrency`, here the fleet's
# capacity as the admin declares it. The service's unit names no runner setting (the spec
# sits at a fixed /etc path), so a switch that changes settings only renders config.toml
# again, and gitlab-runner reloads it. A switch that upgrades the driver or gitlab-runner
# reloads the unit: its script drains gitlab-runner (no new jobs, running jobs finish) and
# systemd starts the new one; the switch does not wait. Documentation: docs/nixos.md.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.services.gitlab-runner-tart;
  render = import ../darwin-modules/render.nix;
  agent = import ../darwin-modules/agent.nix;
  runnerModule = import ../nix/runner-options.nix {
    inherit lib;
    defaultBackend = "orchard";
  };

  driverExe = "${cfg.package}/bin/gitlab-runner-tart-driver";
  capacity = cfg.fleet.workers * cfg.fleet.vmsPerWorker;

  driverConfigFiles = lib.mapAttrs (
    n: runner:
    pkgs.writeText "gitlab-runner-tart-${n}.yaml" (
      builtins.toJSON (render.driverConfig {
        inherit (cfg) concurrency;
        inherit runner;
      })
    )
  ) cfg.runners;

  specFile = pkgs.writeText "gitlab-runner-tart-spec.json" (
    builtins.toJSON (
      render.spec {
        inherit cfg;
        driver = driverExe;
        driverConfigFiles = lib.mapAttrs (_: f: "${f}") driverConfigFiles;
      }
    )
  );
  stableSpec = "/etc/gitlab-runner-tart/spec.json";

  toolPath = [
    cfg.package
    cfg.gitlabRunnerPackage
    pkgs.openssh
    pkgs.coreutils
  ]
  ++ cfg.extraPackages;

  agentArgs = {
    inherit (pkgs.stdenv) shell;
    driver = driverExe;
    gitlabRunner = "${cfg.gitlabRunnerPackage}/bin/gitlab-runner";
    specFile = stableSpec;
    logFile = null;
    path = map (p: "${p}/bin") toolPath;
    home = cfg.stateDir;
    inherit (cfg) configFile stateDir drainTimeout;
  };
  runnerScript = pkgs.writeScript "gitlab-runner-tart" (agent.script agentArgs);
  renderCommand = render.renderCommand {
    driver = driverExe;
    specFile = stableSpec;
    inherit (cfg) configFile;
  };

  renderCfg = cfg // {
    primaryUser = cfg.user;
    linuxGuestsOnly = true;
  };

  hardening = {
    User = cfg.user;
    Group = cfg.group;
    UMask = "0077";
    NoNewPrivileges = true;
    PrivateTmp = true;
    ProtectSystem = "strict";
    ProtectHome = "read-only";
    ReadWritePaths = [ cfg.stateDir ];
    WorkingDirectory = cfg.stateDir;
  };
in
{
  options.services.gitlab-runner-tart = {
    enable = mkEnableOption "a GitLab Runner whose jobs run in VMs of an Orchard fleet of Macs";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../nix/package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The gitlab-runner-tart-driver package.";
    };

    gitlabRunnerPackage = mkOption {
      type = types.package;
      default = pkgs.gitlab-runner;
      defaultText = literalExpression "pkgs.gitlab-runner";
      description = "GitLab Runner.";
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "Extra packages on the service's PATH.";
    };

    user = mkOption {
      type = types.str;
      default = "gitlab-runner-tart";
      description = "User the runner runs as; created as a system user when left at the default.";
    };

    group = mkOption {
      type = types.str;
      default = "gitlab-runner-tart";
      description = "Group of that user; created when left at the default.";
    };

    fleet = {
      workers = mkOption {
        type = types.ints.positive;
        example = 4;
        description = "Orchard workers (Macs) that take this host's jobs.";
      };
      vmsPerWorker = mkOption {
        type = types.ints.positive;
        default = 2;
        description = "VMs each worker runs at once for this host: at most 2 for macOS guests (Apple's limit); more only with `linuxGuestsOnly`.";
      };
      linuxGuestsOnly = mkOption {
        type = types.bool;
        default = false;
        description = "Declare that every job uses a Linux image, lifting the limit of 2 VMs per worker.";
      };
    };

    concurrency = mkOption {
      type = types.ints.positive;
      default = capacity;
      defaultText = literalExpression "fleet.workers * fleet.vmsPerWorker";
      description = "Jobs at once: config.toml `concurrent` and every runner's `--concurrency`; at most the fleet's capacity (`fleet.workers` × `fleet.vmsPerWorker`).";
    };

    checkInterval = mkOption {
      type = types.ints.positive;
      default = 3;
      description = "config.toml `check_interval` in seconds.";
    };

    shutdownTimeout = mkOption {
      type = types.nullOr (types.ints.between 1 agent.maxShutdownTimeout);
      default = null;
      description = "config.toml `shutdown_timeout` in seconds (GitLab Runner's default is 30).";
    };

    logLevel = mkOption {
      type = types.nullOr (
        types.enum [
          "debug"
          "info"
          "warn"
          "error"
          "fatal"
          "panic"
        ]
      );
      default = null;
      description = "config.toml `log_level`.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/gitlab-runner-tart";
      description = "GitLab Runner's working directory and the user's home (mode 0700).";
    };

    configFile = mkOption {
      type = types.str;
      default = "${cfg.stateDir}/config.toml";
      defaultText = literalExpression ''"''${stateDir}/config.toml"'';
      description = "Where config.toml is written (mode 0600).";
    };

    drainTimeout = mkOption {
      type = types.ints.between 1 agent.maxDrainTimeout;
      default = 3600;
      description = ''
        Seconds that running jobs get to finish when the service stops or an upgrade
        restarts it: gitlab-runner takes no new job meanwhile, and jobs still running after
        this are aborted (the driver deletes their VMs). A switch does not wait for it.
      '';
    };

    extraConfig = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      description = "Free-form top-level config.toml keys, merged deeply. `concurrent`, `check_interval` and `runners` are refused: use the options.";
    };

    gc = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run the driver's sweep (`gitlab-runner-tart-driver gc`: failed and left-behind VMs of these runners on the controller) periodically.";
      };
      interval = mkOption {
        type = types.str;
        default = "hourly";
        description = "systemd calendar expression of the sweeps.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra arguments of `gc`.";
      };
    };

    runners = mkOption {
      type = types.attrsOf (types.submodule runnerModule);
      default = { };
      description = "Runners (config.toml `[[runners]]` entries); each needs `orchard.url`, `orchard.serviceAccount` and `orchard.tokenFile`.";
    };

    rendered = mkOption {
      internal = true;
      readOnly = true;
      type = types.attrsOf types.anything;
      description = "What the module rendered; for tests and debugging.";
    };
  };

  config = mkIf cfg.enable {
    services.gitlab-runner-tart.rendered = {
      inherit specFile driverConfigFiles runnerScript;
      assertions = render.assertions renderCfg;
    };

    assertions =
      render.assertions renderCfg
      ++ [
        {
          assertion = cfg.concurrency <= capacity;
          message = "services.gitlab-runner-tart.concurrency (${toString cfg.concurrency}) is more than the fleet's capacity, fleet.workers × fleet.vmsPerWorker = ${toString capacity}; jobs beyond it would wait in Orchard's queue and time out. Lower it, or declare the fleet's size.";
        }
        {
          assertion = cfg.fleet.vmsPerWorker <= 2 || cfg.fleet.linuxGuestsOnly;
          message = "services.gitlab-runner-tart.fleet.vmsPerWorker is ${toString cfg.fleet.vmsPerWorker}, but a Mac runs at most 2 macOS VMs; lower it to 2, or set fleet.linuxGuestsOnly = true if every job uses a Linux image.";
        }
      ]
      ++ lib.mapAttrsToList (n: r: {
        assertion = render.isOrchard r;
        message = "services.gitlab-runner-tart.runners.${n}.backend is \"tart\", but Tart runs only on macOS; on NixOS every runner uses backend = \"orchard\".";
      }) cfg.runners;
    warnings = render.warnings cfg;

    users.users = mkIf (cfg.user == "gitlab-runner-tart") {
      gitlab-runner-tart = {
        isSystemUser = true;
        inherit (cfg) group;
        home = cfg.stateDir;
        description = "GitLab Runner (Orchard)";
      };
    };
    users.groups = mkIf (cfg.group == "gitlab-runner-tart") { gitlab-runner-tart = { }; };

    systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0700 ${cfg.user} ${cfg.group} -" ];

    environment.etc."gitlab-runner-tart/spec.json".source = specFile;

    # The runner. Its unit changes only with the script (packages, paths, drain time), and
    # then a switch reloads it: SIGTERM makes the script drain gitlab-runner, and Restart
    # starts the new script once the jobs are done. Stopping drains the same way.
    systemd.services.gitlab-runner-tart = {
      description = "GitLab Runner with jobs in Orchard VMs";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "gitlab-runner-tart-config.service"
      ];
      reloadIfChanged = true;
      serviceConfig = hardening // {
        ExecStart = runnerScript;
        ExecReload = "${pkgs.coreutils}/bin/kill -TERM $MAINPID";
        Restart = "always";
        RestartSec = 5;
        KillMode = "mixed";
        # The drain, then gitlab-runner's own shutdown (at most maxShutdownTimeout).
        TimeoutStopSec = cfg.drainTimeout + agent.maxShutdownTimeout + 60;
      };
    };

    # Renders config.toml again when a switch changes the spec (restartTriggers: the unit
    # stays active, so a switch restarts it) and when a token file changes (the path unit
    # starts the other, inactive one); gitlab-runner reloads config.toml by itself.
    systemd.services.gitlab-runner-tart-config = {
      description = "Render GitLab Runner's config.toml for Orchard";
      wantedBy = [ "multi-user.target" ];
      restartTriggers = [ specFile ];
      serviceConfig = hardening // {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = renderCommand;
      };
    };
    systemd.services.gitlab-runner-tart-token = {
      description = "Render GitLab Runner's config.toml after a token file changed";
      serviceConfig = hardening // {
        Type = "oneshot";
        ExecStart = renderCommand;
      };
    };
    systemd.paths.gitlab-runner-tart-token = {
      wantedBy = [ "multi-user.target" ];
      pathConfig.PathChanged = lib.mapAttrsToList (
        _: r: render.pathString r.authenticationTokenFile
      ) cfg.runners;
    };

    systemd.services.gitlab-runner-tart-gc = mkIf cfg.gc.enable {
      description = "Sweep failed and left-behind Orchard VMs of the GitLab runners";
      path = toolPath;
      script = render.gcScript {
        driver = driverExe;
        configFiles = map (f: "${f}") (lib.attrValues driverConfigFiles);
        inherit (cfg.gc) extraArgs;
      };
      serviceConfig = hardening // {
        Type = "oneshot";
      };
    };
    systemd.timers.gitlab-runner-tart-gc = mkIf cfg.gc.enable {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gc.interval;
        Persistent = true;
      };
    };
  };
}
