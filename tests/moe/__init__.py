"""Tests of jaxmoe.moe: the routers (one module per router) and the MoE layer's router plug-in."""
