"""Research scripts behind docs/benchmarks/ (INT8 placement, INT4 classifier layers, kernel families): each is
``python -m alexnet_deploy.studies.<name>`` and uses only the package's public API; nothing in the product
imports them."""
