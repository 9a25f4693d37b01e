# Carina global scheduler configuration (admin), in the original Carina (Ruby hash) form.
#
# global.yaml is the same configuration in the native form; tests/unit/compat keeps the two equal.
# Classes rank bronze < silver < gold < platinum: a pool serves services of its class and above.
#
# Carina named each pool after the endpoint that feeds it (a capacity request names its environment's
# endpoint as the pool), so the pools here carry the endpoint names of carina.yaml / config.rb.
# Numbers are strings, as in Carina's own global.rb.

SHAREDPOOLS = {
  # gold capacity in the first simulated zone
  'zone1' => {
    :zone              => 'zone1',
    :allocateable_cpus => '16',
    :allocateable_mem  => '32768',
    :service_class     => 'gold',
  },
  # silver capacity in the second simulated zone
  'zone2' => {
    :zone              => 'zone2',
    :allocateable_cpus => '8',
    :allocateable_mem  => '16384',
    :service_class     => 'gold',
  },
}

SERVICES = {
  'demo'  => { :priority => 'gold',   :maxcpus => '12', :maxmemory => '24576' },
  'batch' => { :priority => 'bronze', :maxcpus => '4',  :maxmemory => '8192' },
}
