# Checks of what the module sets up on the host (Softnet, warm pools, Orchard runners, the
# host directories activation creates), split from ./eval.nix, which passes what they use.
{
  lib,
  has,
  stub,
  evalHost,
  cfgOf,
  activationOf,
  agentScriptOf,
  configPlistOf,
  failedMessages,
  refusedAt,
  runnerAt,
  systems,
  oneAtATime,
  toolPath,
  activation,
  agentPlistOf,
  agentPlist,
  c,
}:
{
  "softnet: on by default with concurrency 2, a setuid copy first on PATH" =
    has
      "install -m 4755 -o root -g wheel '${stub.softnet}/bin/softnet' '/usr/local/libexec/gitlab-runner-tart/softnet'"
      activation;
  "softnet: not every VM's with concurrency 1, yet installed, since a job may ask for it" =
    has
      "install -m 4755 -o root -g wheel '${stub.softnet}/bin/softnet' '/usr/local/libexec/gitlab-runner-tart/softnet'"
      (activationOf oneAtATime)
    && !(has "rm -rf '/usr/local/libexec/gitlab-runner-tart'" (activationOf oneAtATime))
    && has "export PATH='${toolPath}'" (agentScriptOf oneAtATime)
    && (cfgOf oneAtATime).rendered.driverConfigs.macos.softnet == false;
  "softnet: enable = false still installs it for a runner whose settings ask for it" =
    let
      e = evalHost [
        {
          services.gitlab-runner-tart.softnet.enable = false;
          services.gitlab-runner-tart.runners.macos.settings.softnet_allow = [ "10.0.0.0/8" ];
        }
      ];
    in
    has "install -m 4755 -o root -g wheel '${stub.softnet}/bin/softnet'" (activationOf e)
    && (cfgOf e).rendered.driverConfigs.macos.softnet == false;
  "softnet: on by default with concurrency 1 and a warm pool (the warm VM runs beside the job)" =
    let
      e = evalHost [
        {
          services.gitlab-runner-tart.concurrency = lib.mkForce 1;
          services.gitlab-runner-tart.runners.macos.warm.pool = 1;
        }
      ];
    in
    has
      "install -m 4755 -o root -g wheel '${stub.softnet}/bin/softnet' '/usr/local/libexec/gitlab-runner-tart/softnet'"
      (activationOf e)
    && (cfgOf e).rendered.driverConfigs.macos.softnet == true;
  "warm pool: in the driver yaml, filled in the background by the config agent, per runner" =
    let
      e = evalHost [ { services.gitlab-runner-tart.runners.macos.warm.pool = 1; } ];
      files = (cfgOf e).rendered.driverConfigFiles;
      script = e.config.launchd.user.agents.gitlab-runner-tart-config.command.text;
    in
    failedMessages e == [ ]
    && (cfgOf e).rendered.driverConfigs.macos.warm_pool == 1
    && !((cfgOf e).rendered.driverConfigs.linux ? warm_pool)
    && has "gitlab-runner-tart-driver' warm --config '${files.macos}' &" script
    && has "<key>AbandonProcessGroup</key>\n<true/>" (configPlistOf e)
    && !(has "warm --config '${files.linux}'" script)
    && agentPlistOf e == agentPlist;
  "warm pool: images and expiry reach the driver" =
    let
      e = evalHost [
        {
          services.gitlab-runner-tart.runners.linux.warm = {
            pool = 2;
            images = [ "ghcr.io/cirruslabs/ubuntu:24.04" ];
            expiry = 60;
          };
        }
      ];
      y = (cfgOf e).rendered.driverConfigs.linux;
    in
    y.warm_pool == 2
    && y.warm_images == [ "ghcr.io/cirruslabs/ubuntu:24.04" ]
    && y.warm_expiry == 60;
  "warm pool with a cache dir: a warning (the driver would not use the pool)" =
    let
      e = evalHost [ { services.gitlab-runner-tart.runners.macos.warm.pool = 1; } ];
    in
    lib.any (has "warm.pool is 1, but the driver uses no warm VM") e.config.warnings
    && c.warnings == [ ];
  "refused: a warm pool without an image" =
    refusedAt "${runnerAt}.warm.pool is 1 but names no image" {
      runners.macos = {
        defaultImage = lib.mkForce null;
        warm.pool = 1;
      };
    };
  "refused: settings.warm_pool" = refusedAt "${runnerAt}.settings.warm_pool" {
    runners.macos.settings.warm_pool = 1;
  };
  "orchard runner on a Mac: concurrency 6 allowed, driver yaml for the fleet" =
    let
      e = systems.orchard-runner;
    in
    failedMessages e == [ ]
    && (cfgOf e).rendered.driverConfigs.macos == {
      backend = "orchard";
      concurrency = 6;
      orchard = {
        url = "https://orchard.example.com:6120";
        service_account = "gitlab-runner";
        token_file = "/Users/ci/.config/gitlab-runner/orchard.token";
      };
    };
  "orchard runners only: no setuid Softnet on this Mac" =
    has "rm -rf '/usr/local/libexec/gitlab-runner-tart'" (activationOf systems.orchard-runner)
    && has "install -m 4755" activation;
  "orchard runner on a Mac: this host's builds dir is refused" =
    refusedAt "${runnerAt}: buildsDir" {
      runners.macos = {
        backend = "orchard";
        orchard = {
          url = "https://orchard.example.com";
          serviceAccount = "gitlab-runner";
          tokenFile = "/Users/ci/orchard.token";
        };
      };
    };
  "activation: dirs owned by the user" =
    lib.all (p: has "gitlab_runner_tart_dir ${p}" activation)
      [
        "0700 '/Users/ci/.gitlab-runner'"
        "0755 '/Users/ci/Library/Logs/gitlab-runner-tart'"
        "0750 '/Users/ci/tart/builds'"
        "0750 '/Users/ci/tart/cache'"
      ];
  "activation: volume host dir created if missing" =
    has
      "[ -e '/Users/ci/tart/shared' ] || gitlab_runner_tart_dir 0750 '/Users/ci/tart/shared'"
      activation;
  "activation: before launchd reloads services" = lib.hasPrefix "# gitlab-runner-tart" activation;
  "activation: in the activate script" =
    has
      "setting up gitlab-runner-tart directories"
      c.system.activationScripts.script.text;
  "activation: every function it defines is called (default, and no volumes or dirs)" =
    lib.all (
      text:
      let
        defined = map lib.head (
          lib.filter lib.isList (builtins.split "(gitlab_runner_tart[a-z_]*)\\(\\) \\{" text)
        );
      in
      defined != [ ] && lib.all (f: has "${f} " text) defined
    ) [
      activation
      (activationOf systems.no-builds-or-cache-dirs)
    ];
}
