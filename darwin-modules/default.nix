# nix-darwin module: a Mac becomes a GitLab Runner whose jobs run in fresh Tart VMs.
#
# User launch agents (Tart needs the GUI session of a logged-in user): one renders
# config.toml with `gitlab-runner-tart-driver runner-config` from a token-free spec in the
# store plus the token files, whenever the spec or a token file changes; one runs
# `gitlab-runner run`, which reloads config.toml by itself. The runner's plist is the same
# for every configuration, so nix-darwin never reloads it; a new version reaches it through
# a drain (./agent.nix). Documentation: docs/nix-darwin.md.
{
  config,
  options,
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
  render = import ./render.nix;
  agent = import ./agent.nix;

  # `users.users.<name>.home` is null unless declared, as is the whole entry. nix-darwin's
  # `system.primaryUserHome` is right for the primary user when it is not null, but it is
  # null for `users.users.<u> = { }` (its fallback only covers a missing entry).
  # `/Users/<user>` is right for a user that already exists on the Mac (created in System
  # Settings); one that nix-darwin creates (`users.knownUsers`) without `home` gets
  # /var/empty instead, which an assertion refuses (./render.nix), and the agents refuse to
  # run when the user database says otherwise (./agent.nix `homeCheck`).
  declaredHome = if cfg.user == null then null else config.users.users.${cfg.user}.home or null;
  home =
    if cfg.user == null then
      "/var/empty"
    else if declaredHome == null then
      "/Users/${cfg.user}"
    else if cfg.user == config.system.primaryUser && options.system ? primaryUserHome then
      toString config.system.primaryUserHome
    else
      toString declaredHome;

  runnerModule = import ../nix/runner-options.nix {
    inherit lib;
    defaultBackend = "tart";
  };

  driverExe = "${cfg.package}/bin/gitlab-runner-tart-driver";

  driverConfigs = lib.mapAttrs (
    _: runner:
    render.driverConfig {
      inherit (cfg) concurrency;
      tartExecutable = "${cfg.tartPackage}/bin/tart";
      softnet = cfg.softnet.enable;
      inherit runner;
    }
  ) cfg.runners;

  driverConfigFiles = lib.mapAttrs (
    n: c: pkgs.writeText "gitlab-runner-tart-${n}.yaml" (builtins.toJSON c)
  ) driverConfigs;

  spec = render.spec {
    inherit cfg;
    driver = driverExe;
    driverConfigFiles = lib.mapAttrs (_: f: "${f}") driverConfigFiles;
  };

  specFile = pkgs.writeText "gitlab-runner-tart-spec.json" (builtins.toJSON spec);

  # Where the runner's agent reads the spec: a path that stays the same across switches
  # (nix-darwin points it at the current spec), so that the agent's script does not change
  # with runner settings and a switch does not restart gitlab-runner.
  stableSpec = "/etc/gitlab-runner-tart/spec.json";

  agentArgs = {
    inherit (pkgs.stdenv) shell;
    driver = driverExe;
    gitlabRunner = "${cfg.gitlabRunnerPackage}/bin/gitlab-runner";
    specFile = stableSpec;
    logFile = "${cfg.logDir}/gitlab-runner.log";
    path = map (p: if lib.isDerivation p then "${p}/bin" else p) agentPath;
    inherit home;
    inherit (cfg)
      user
      configFile
      stateDir
      drainTimeout
      ;
    inherit (agent) generationFile;
  };
  agentScript = pkgs.writeScript "gitlab-runner-tart-agent" (agent.script agentArgs);

  # A periodic agent's script, linked at /etc/gitlab-runner-tart/<name>. `user` is set when
  # it runs Tart or the driver, so that it checks the user's home (agent.nix `homeCheck`).
  periodicScript =
    {
      name,
      logFile ? null,
      user ? null,
      body,
    }:
    pkgs.writeScript "gitlab-runner-tart-${name}" (
      agent.periodicScript {
        inherit (agentArgs) shell path home;
        inherit (cfg) stateDir;
        inherit logFile user body;
      }
    );
  gcScript = periodicScript {
    name = "gc";
    logFile = "${cfg.logDir}/gc.log";
    inherit (cfg) user;
    body = render.gcScript {
      driver = driverExe;
      configFiles = map (f: "${f}") (lib.attrValues driverConfigFiles);
      inherit (cfg.gc) extraArgs;
    };
  };
  # Rotates the logs even when the other agents refuse to run (each refusal adds a line).
  logsScript = periodicScript {
    name = "logs";
    body = render.logRotateScript {
      logs = logFiles;
      maxBytes = cfg.logs.maxSize;
      inherit (cfg.logs) keep;
    };
  };

  tokenFiles = map (r: render.pathString r.authenticationTokenFile) (lib.attrValues cfg.runners);

  # Every agent of the module runs in the user's GUI (Aqua) session only, where Tart works.
  agentDefaults = {
    LimitLoadToSessionType = "Aqua";
  };

  # The setuid Softnet copy comes first whether or not it is installed, so that turning it on
  # or off changes no agent's PATH.
  agentPath = [
    render.softnetDir
    cfg.package
    cfg.tartPackage
    cfg.gitlabRunnerPackage
  ]
  ++ cfg.extraPackages
  ++ [
    "/usr/bin"
    "/bin"
    "/usr/sbin"
    "/sbin"
  ];

  renderCfg = cfg // {
    inherit (config.system) primaryUser;
    inherit (config.users) knownUsers;
    inherit declaredHome;
  };

  logFiles = [
    "${cfg.logDir}/gitlab-runner.log"
    "${cfg.logDir}/config.log"
    "${cfg.logDir}/gc.log"
  ];
in
{
  options.services.gitlab-runner-tart = {
    enable = mkEnableOption "a GitLab Runner whose jobs run in Tart VMs (custom executor)";

    user = mkOption {
      type = types.nullOr types.str;
      default = config.system.primaryUser;
      defaultText = literalExpression "config.system.primaryUser";
      description = "User whose GUI session runs the runner and owns its files. Must be `system.primaryUser`, whose launch agents nix-darwin manages; keep that user logged in (auto-login), as Tart needs a GUI session for macOS guests.";
    };

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../nix/package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The gitlab-runner-tart-driver package.";
    };

    tartPackage = mkOption {
      type = types.package;
      default = pkgs.tart;
      defaultText = literalExpression "pkgs.tart";
      description = ''
        Tart. Unfree: allow it with `nixpkgs.config.allowUnfreePackages = [ "tart" ];`.
      '';
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
      description = "Extra packages on the agent's PATH (before /usr/bin:/bin:/usr/sbin:/sbin).";
    };

    concurrency = mkOption {
      type = types.ints.positive;
      default = 2;
      description = "Jobs at once on this host: config.toml `concurrent` and every runner's `prepare --concurrency`. At most 2 unless `linuxGuestsOnly`.";
    };

    linuxGuestsOnly = mkOption {
      type = types.bool;
      default = false;
      description = "Declare that every job uses a Linux image, lifting the limit of 2 macOS VMs on `concurrency`.";
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
      default = "${home}/.gitlab-runner";
      defaultText = literalExpression ''"''${home}/.gitlab-runner"'';
      description = "GitLab Runner's working directory (mode 0700, owned by the user).";
    };

    configFile = mkOption {
      type = types.str;
      default = "${cfg.stateDir}/config.toml";
      defaultText = literalExpression ''"''${stateDir}/config.toml"'';
      description = "Where config.toml is written (mode 0600) each time the agent starts.";
    };

    logDir = mkOption {
      type = types.str;
      default = "${home}/Library/Logs/gitlab-runner-tart";
      defaultText = literalExpression ''"''${home}/Library/Logs/gitlab-runner-tart"'';
      description = "Directory of the agents' logs: `gitlab-runner.log` and `gc.log`.";
    };

    drainTimeout = mkOption {
      type = types.ints.between 1 agent.maxDrainTimeout;
      default = 3600;
      description = ''
        Seconds that running jobs get to finish when a switch upgrades the driver,
        gitlab-runner or Tart (or changes the runner's agent otherwise): gitlab-runner takes
        no new job meanwhile, and jobs still running after this are aborted (and their VMs
        deleted); then the new version starts. The switch does not wait for it. A switch that
        changes only runner settings does not stop the runner at all. Logging out does not
        wait for the drain: macOS ends the session's agents within seconds.
      '';
    };

    logs = {
      maxSize = mkOption {
        type = types.ints.positive;
        default = 10 * 1024 * 1024;
        description = "Bytes after which a log is rotated (checked hourly).";
      };
      keep = mkOption {
        type = types.ints.positive;
        default = 5;
        description = "Rotated copies kept of each log (`<log>.1` is the newest).";
      };
    };

    softnet = {
      enable = mkOption {
        type = types.bool;
        # Orchard runners' VMs run on the fleet, not here. A warm VM runs beside the job, so
        # one job at a time with a warm pool is two VMs at once, as the driver counts them.
        default = lib.any (
          r: !render.isOrchard r && cfg.concurrency + render.warmPool r > 1
        ) (lib.attrValues cfg.runners);
        defaultText = literalExpression "any tart runner with concurrency + its warm.pool > 1";
        description = ''
          Run every job's VM with Softnet, which isolates each VM's network from the host's
          other VMs (the driver's `softnet`; it defaults to on when more than one VM can run).
          When false, a runner's `settings.softnet` or `softnet_allow`, or a job's
          `TART_EXECUTOR_SOFTNET_ENABLED` or `TART_EXECUTOR_SOFTNET_ALLOW`, still turns it on
          for its VMs. Either way, with any Tart runner, activation installs a setuid-root
          copy of `softnet.package` in ${render.softnetDir}, first on the agents' PATH, where
          Tart finds it; with Orchard runners only, that copy is removed.
        '';
      };
      package = mkOption {
        type = types.package;
        default = pkgs.softnet;
        defaultText = literalExpression "pkgs.softnet";
        description = "Softnet.";
      };
    };

    extraConfig = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      example = {
        listen_address = "127.0.0.1:9252";
      };
      description = "Free-form top-level config.toml keys, merged deeply. `concurrent`, `check_interval` and `runners` are refused: use the options.";
    };

    gc = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run the driver's orphan sweep (`gitlab-runner-tart-driver gc`) periodically.";
      };
      interval = mkOption {
        type = types.ints.positive;
        default = 3600;
        description = "Seconds between sweeps.";
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
      description = "Runners (config.toml `[[runners]]` entries) served by this host.";
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
      inherit
        spec
        specFile
        driverConfigs
        driverConfigFiles
        agentScript
        ;
      hostDirs = render.hostDirs cfg;
      assertions = render.assertions renderCfg;
    };

    assertions = render.assertions renderCfg;
    warnings = render.warnings cfg;

    environment.systemPackages = [
      cfg.package
      cfg.tartPackage
      cfg.gitlabRunnerPackage
    ];

    environment.etc."gitlab-runner-tart/spec.json".source = specFile;
    environment.etc."gitlab-runner-tart/agent".source = agentScript;
    environment.etc."gitlab-runner-tart/logs".source = logsScript;
    environment.etc."gitlab-runner-tart/gc" = mkIf cfg.gc.enable { source = gcScript; };

    # Before activation changes anything: the user's home is the one the agents use.
    system.checks.text = mkIf (cfg.user != null) (
      agent.switchCheck {
        inherit (cfg) user;
        inherit home;
      }
    );

    # After users are created and before launch agents are (re)loaded; custom activation
    # script names are never run by nix-darwin.
    system.activationScripts.launchd.text = lib.mkBefore (
      render.activationScript (
        cfg
        // {
          inherit home;
          softnetSource =
            if render.provisionSoftnet cfg.runners then
              "${cfg.softnet.package}/bin/softnet"
            else
              null;
        }
      )
      + agent.prepare {
        inherit (cfg) user;
        legacyRecord = agent.legacyGenerationFile cfg.stateDir;
      }
    );

    # After everything else: a running agent of another generation drains and restarts.
    system.activationScripts.postActivation.text = lib.mkAfter (
      agent.activation {
        inherit (cfg) user drainTimeout;
        inherit home;
        generation = agent.generation agentArgs;
        legacyRecord = agent.legacyGenerationFile cfg.stateDir;
      }
    );

    # The runner. Its plist is the same for every configuration (./agent.nix).
    launchd.user.agents.gitlab-runner-tart = {
      command = agent.link;
      serviceConfig = agent.serviceConfig;
    };

    # Renders config.toml again whenever the spec changes (its plist names the spec, so a
    # switch reloads it) or a token file changes; gitlab-runner then reloads config.toml.
    # Then fills the runners' warm pools (at login, and after such a switch); the gc agent's
    # sweeps pull the warm images again and refill the pools.
    launchd.user.agents.gitlab-runner-tart-config = {
      path = agentPath;
      environment.HOME = home;
      script = ''
        set -eu
        umask 077
        ${agent.homeCheck {
          inherit (cfg) user;
          inherit home;
        }}
        ${render.renderCommand {
          driver = driverExe;
          specFile = "${specFile}";
          inherit (cfg) configFile;
        }}
        ${render.warmCommands {
          driver = driverExe;
          configs = lib.mapAttrs (n: c: {
            config = c;
            file = "${driverConfigFiles.${n}}";
          }) driverConfigs;
        }}
      '';
      serviceConfig = agentDefaults // {
        RunAtLoad = true;
        AbandonProcessGroup = true;
        WatchPaths = tokenFiles;
        ProcessType = "Background";
        WorkingDirectory = cfg.stateDir;
        StandardOutPath = "${cfg.logDir}/config.log";
        StandardErrorPath = "${cfg.logDir}/config.log";
      };
    };

    # The periodic agents run fixed paths too: an upgrade changes neither plist, and a
    # sweep in progress finishes with the old version.
    launchd.user.agents.gitlab-runner-tart-logs = {
      command = "/etc/gitlab-runner-tart/logs";
      serviceConfig = agentDefaults // {
        StartInterval = 3600;
        RunAtLoad = true;
        ProcessType = "Background";
      };
    };

    launchd.user.agents.gitlab-runner-tart-gc = mkIf cfg.gc.enable {
      command = "/etc/gitlab-runner-tart/gc";
      serviceConfig = agentDefaults // {
        StartInterval = cfg.gc.interval;
        RunAtLoad = false;
        ProcessType = "Background";
      };
    };
  };
}
